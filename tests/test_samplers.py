"""The latent densities of the fitted samplers: mixture.py (gmm) and flow.py (flow), against numpy and scipy."""
import numpy as np
import pytest
import scipy.stats

import flow
import mixture


def clusters(count, centres, spread, seed=0):
    rng = np.random.RandomState(seed)
    return (centres[rng.randint(len(centres), size=count)] + rng.normal(0, spread, (count, centres.shape[1]))
            ).astype(np.float32)


def test_the_mixture_draws_from_its_fit():
    rng = np.random.RandomState(0)
    centres = rng.normal(0, 5, (10, 3))
    z_means = np.concatenate([centre + rng.normal(0, 0.3, (400, 3)) for centre in centres])[rng.permutation(4000)]
    arrays = mixture.fit(z_means[:3600], z_means[3600:], 10, seed=0)
    assert mixture.components(arrays) == 10 and list(arrays['sizes']) == [10]
    draws = mixture.sample(arrays, 100000, seed=0)
    assert np.array_equal(draws[:100], mixture.sample(arrays, 100000, seed=0)[:100])  # seeded
    weights, means, covariances = arrays['weights'], arrays['means'], arrays['covariances']
    mean = weights @ means
    second = sum(w * (c + np.outer(m, m)) for w, m, c in zip(weights, means, covariances))
    assert np.allclose(draws.mean(axis=0), mean, atol=0.1)
    assert np.allclose(np.cov(draws, rowvar=False), second - np.outer(mean, mean), rtol=0.05, atol=0.1)
    # every draw is near one of the data's clusters, not between them
    assert np.min(np.linalg.norm(draws[:, None] - centres[None], axis=2), axis=1).max() < 3
    # its density is the mixture's, term by term
    points = z_means[:50]
    expected = np.log(sum(w * scipy.stats.multivariate_normal(m, c).pdf(points)
                          for w, m, c in zip(weights, means, covariances)))
    assert np.allclose(mixture.log_likelihood(arrays, points), expected, rtol=1e-6)


def test_the_mixture_is_sized_by_the_held_out_likelihood(capsys):
    # 40 tight clusters: 10 components cannot fit them, 50 can; the sizes stop at the first that scores lower.
    centres = np.random.RandomState(1).uniform(-20, 20, (40, 2))
    latents = clusters(6000, centres, 0.2)
    arrays = mixture.fit(latents[:5400], latents[5400:], 0, seed=0)
    sizes, scores = list(arrays['sizes']), list(arrays['held_out_log_likelihoods'])
    assert sizes == list(mixture.SIZES[:len(sizes)]) and len(sizes) >= 3
    assert mixture.components(arrays) == sizes[int(np.argmax(scores))] >= 50
    assert scores[1] > scores[0]  # 20 components beat 10 on points they never saw
    assert len(sizes) == len(mixture.SIZES) or scores[-1] < scores[-2]  # stopped where the score fell
    assert mixture.held_out_log_likelihood(arrays) == max(scores)
    assert f'a 10-component mixture of 5400 latents: held-out log-likelihood {scores[0]:.3f}' in capsys.readouterr().out


def random_flow(z_dim, seed):
    """A flow whose couplings are far from the identity: random weights of the shapes flow.py builds."""
    rng = np.random.RandomState(seed)
    weights = {name: rng.normal(0, 0.1, shape).astype(np.float32) for name, shape in flow.weight_shapes(z_dim).items()}
    weights['flow/shift'] = rng.normal(0, 1, z_dim).astype(np.float32)
    weights['flow/log_scale'] = rng.normal(0, 0.3, z_dim).astype(np.float32)
    return weights


def test_the_flow_log_density_is_the_base_density_and_a_numerical_jacobian():
    # z = g(u) by the inverse flow: log p(z) = log N(u; 0, I) - log |det dg/du|, the Jacobian by central differences.
    weights = random_flow(3, seed=0)
    u = np.random.RandomState(1).standard_normal((5, 3))
    step = 1e-3
    shifted = np.concatenate([np.concatenate([point + step * np.eye(3), point - step * np.eye(3)]) for point in u])
    z = flow.latents_of(weights, np.concatenate([u, shifted]).astype(np.float32)).astype(np.float64)
    log_p = flow.log_likelihood(weights, z[:5].astype(np.float32))
    for i, point in enumerate(u):
        around = z[5 + 6 * i:11 + 6 * i]
        jacobian = (around[:3] - around[3:]).T / (2 * step)
        expected = scipy.stats.multivariate_normal(np.zeros(3)).logpdf(point) - np.log(abs(np.linalg.det(jacobian)))
        assert abs(log_p[i] - expected) < 2e-3, (log_p[i], expected)
        assert np.abs(jacobian - np.diag(np.diag(jacobian))).max() > 0.01  # the dimensions move one another


@pytest.mark.slow  # 160,000 grid points through the flow: 5 s
def test_the_flow_density_integrates_to_one():
    weights = random_flow(2, seed=2)
    draws = flow.sample(weights, 20000, seed=0)
    low, high = np.percentile(draws, 0.01, axis=0) - 3, np.percentile(draws, 99.99, axis=0) + 3
    xs, ys = np.linspace(low[0], high[0], 400), np.linspace(low[1], high[1], 400)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
    mass = np.exp(flow.log_likelihood(weights, grid).astype(np.float64)).sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert abs(mass - 1) < 0.01, mass


@pytest.mark.slow  # 15 epochs of a flow: 10 s
def test_the_flow_sampler_draws_where_the_latents_are(monkeypatch):
    monkeypatch.setattr(flow, 'WIDTH', 64)  # a narrower flow: 4,000 latents in a few seconds
    centres = np.array([[2.0, 0.0, 1.0], [-2.0, 0.0, -1.0]])
    latents = clusters(4000, centres, 0.1)
    weights, best = flow.fit(latents[:3600], latents[3600:], 15, seed=0)
    assert set(weights) == set(flow.weight_shapes(3)) and 0 <= best['epoch'] < 15
    held_out = flow.log_likelihood(weights, latents[3600:])
    assert np.isclose(held_out.mean(), best['held_out_log_likelihood'], atol=1e-4)
    # far above N(0, I)'s density of the same points, and of the standardised Gaussian the flow starts as
    standardised = scipy.stats.multivariate_normal(latents[:3600].mean(0), np.diag(latents[:3600].var(0)))
    assert held_out.mean() > standardised.logpdf(latents[3600:]).mean() + 1
    draws = flow.sample(weights, 5000, seed=1)
    assert np.array_equal(draws, flow.sample(weights, 5000, seed=1))  # seeded
    near = lambda z: np.mean(np.min(np.linalg.norm(z[:, None] - centres[None], axis=2), axis=1) < 0.5)
    assert near(draws) > 0.6 and near(np.random.RandomState(2).standard_normal((5000, 3))) < 0.05
    assert np.allclose(draws.mean(axis=0), latents.mean(axis=0), atol=0.2)


def test_refined_latents_are_the_encoders_reading_of_their_decodes(trained):
    # --refine_steps: each step replaces a latent by the posterior mean of the image it decodes to; the FID record,
    # the record's name and the grid's name say how many steps (and nothing changes without the flag).
    import command_line
    import vae
    import vae_inference
    config, options = command_line.parse_command_line(['--run_directory', str(trained), '--refine_steps', '2'],
                                                      vae_inference.FLAGS, '', from_run=True)
    sess, outputs, epoch = vae_inference.restore(config)
    with sess:
        z = vae.fixed_latents(config, 7)
        once = vae_inference.refined(sess, outputs, z, 1)
        decoded = sess.run(outputs.generation, {outputs.z: z})
        assert np.allclose(once, sess.run(outputs.z_mean, {outputs.images: decoded}), atol=1e-6)
        assert not np.allclose(once, z, atol=0.1)
        latents, facts = vae_inference.sampler_latents(sess, outputs, config, None, epoch, None, options, 7)
        assert facts == {'refine_steps': 2}
        assert np.allclose(latents, vae_inference.refined(sess, outputs, once, 1), atol=1e-6)
    assert vae_inference.sampler_settings(config, options, None) == ['seed0']  # the fit's key: refinement apart
    assert vae_inference.planned_pictures(config, options, epoch, samples=True)['generations'].endswith(
        f'generations_model_{epoch}-r2.png')
    options['refine_steps'] = 0
    assert vae_inference.planned_pictures(config, options, epoch, samples=True)['generations'].endswith(
        f'generations_model_{epoch}.png')


@pytest.mark.parametrize('steps', ['-1', '101'])
def test_refine_steps_out_of_range_is_one_line(trained, steps):
    from conftest import assert_refused, run_script, snapshot
    before = snapshot(trained)
    assert_refused(run_script('vae_inference.py', '--run_directory', trained, '--refine_steps', steps),
                   f"--refine_steps must be in 0..100 (0: the sampler's draws as they are), got {steps}", trained, before)
