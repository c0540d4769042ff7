"""A full-covariance Gaussian mixture fitted to a trained model's latents: the `gmm` sampler of vae_inference.py
(Ghosh et al. 2020's ex-post density estimation, scikit-learn's GaussianMixture), its size fixed or chosen by the
held-out log-likelihood.

    arrays = mixture.fit(train, held_out, components, seed)  # {name: array}: the mixture and how it was chosen
    latents = mixture.sample(arrays, count, seed)             # [count, z_dim] draws of the mixture
    log_p = mixture.log_likelihood(arrays, latents)           # [count] log densities, in nats

components 0 tries the SIZES in turn, each fitted to `train` and scored on `held_out`, and stops at the first size
that scores lower than the one before (the held-out likelihood rises, peaks and falls as the mixture starts to fit
the training set's own points); the best size is then fitted again to train and held_out together, as a fixed
size is.
"""
import warnings

import numpy as np

SIZES = (10, 20, 50, 100, 200)
MAX_ITERATIONS = 100  # scikit-learn's default EM iterations


def fitted(components, latents, seed):
    from sklearn.mixture import GaussianMixture
    return GaussianMixture(components, covariance_type='full', random_state=seed,
                           max_iter=MAX_ITERATIONS).fit(latents)


def fit(train, held_out, components, seed):
    """The mixture of `components` (0: the size of SIZES with the best held-out log-likelihood) fitted to train
    and held_out together: {'weights', 'means', 'covariances'}, with 'sizes' and 'held_out_log_likelihoods' (mean
    log p of the held-out latents under each size's fit to train alone, in nats) of the sizes tried."""
    sizes, scores = [], []
    for size in ([components] if components else [size for size in SIZES if size <= len(train)]):
        scores.append(fitted(size, train, seed).score(held_out))
        sizes.append(size)
        print(f'a {size}-component mixture of {len(train)} latents: held-out log-likelihood {scores[-1]:.3f} nats')
        if len(scores) > 1 and scores[-1] < scores[-2]:
            break
    best = sizes[int(np.argmax(scores))]
    mixture = fitted(best, np.concatenate([train, held_out]), seed)
    return {'weights': mixture.weights_, 'means': mixture.means_, 'covariances': mixture.covariances_,
            'sizes': np.array(sizes), 'held_out_log_likelihoods': np.array(scores)}


def components(arrays):
    return len(arrays['weights'])


def held_out_log_likelihood(arrays):
    """The held-out mean log-likelihood of the chosen size, in nats."""
    return float(arrays['held_out_log_likelihoods'][list(arrays['sizes']).index(components(arrays))])


def as_mixture(arrays, seed):
    """scikit-learn's GaussianMixture holding these arrays (as fitted: its samples and scores are the fit's)."""
    from sklearn.mixture import GaussianMixture
    mixture = GaussianMixture(components(arrays), covariance_type='full', random_state=seed)
    mixture.weights_, mixture.means_, mixture.covariances_ = arrays['weights'], arrays['means'], arrays['covariances']
    mixture.precisions_cholesky_ = np.stack([np.linalg.inv(np.linalg.cholesky(c)).T for c in arrays['covariances']])
    return mixture


def sample(arrays, count, seed):
    """count latents drawn from the mixture, seeded (scikit-learn draws component by component)."""
    mixture = as_mixture(arrays, seed)  # each covariance has its Cholesky factor: positive definite
    with warnings.catch_warnings():  # numpy's check of that holds a 64x64 covariance's SVD to 1e-8 absolute
        warnings.filterwarnings('ignore', 'covariance is not symmetric positive-semidefinite', RuntimeWarning)
        return mixture.sample(count)[0].astype(np.float32)


def log_likelihood(arrays, latents):
    """log p(z) of each of the [count, z_dim] latents under the mixture, in nats."""
    return as_mixture(arrays, 0).score_samples(latents)
