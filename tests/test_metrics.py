"""Honest numbers: the IWAE estimator against an exact likelihood, unit conversions, active units, the
decoder likelihoods, and the evaluation and picture commands end to end."""
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import command_line
import config_keys
import datasets
import vae
import vae_inference
from conftest import RUNS, TINY, evaluation_record, run_script, subset, tiny_config

tf1 = tf.compat.v1


def linear_gaussian_bounds(ks, points=200, seed=0, iaf_depth=0):
    """A model with a closed-form marginal: z ~ N(0, I), x | z ~ N(W z + b, s^2 I), so x ~ N(b, W W^T + s^2 I).
    q(z|x) is its exact posterior with the mean shifted and the stddev widened, so the ELBO is loose; with
    iaf_depth, that Gaussian carried through an IAF of that many steps with random weights and context.
    Returns exact log p(x) and, for each k, the per-point (ELBO estimate, IWAE bound)."""
    rng = np.random.RandomState(seed)
    z_dim, x_dim, noise = 3, 6, 0.5
    w, b = rng.normal(size=(x_dim, z_dim)), rng.normal(size=x_dim)
    x = (rng.normal(size=(points, z_dim)) @ w.T + b + noise * rng.normal(size=(points, x_dim)))
    covariance = w @ w.T + noise ** 2 * np.eye(x_dim)
    difference = x - b
    exact = -0.5 * (x_dim * np.log(2 * np.pi) + np.linalg.slogdet(covariance)[1] +
                    np.sum(difference @ np.linalg.inv(covariance) * difference, axis=1))
    posterior_cov = np.linalg.inv(np.eye(z_dim) + w.T @ w / noise ** 2)
    posterior_mean = difference @ w @ posterior_cov.T / noise ** 2
    q_mean = posterior_mean + 0.3
    q_std = np.tile((3.0 if iaf_depth else 1.5) * np.sqrt(np.diag(posterior_cov)), (points, 1))  # the flow shrinks it

    def log_likelihood(images, z):
        mean = tf.matmul(z, tf.constant(w.T, tf.float32)) + tf.constant(b, tf.float32)
        return -0.5 * tf.reduce_sum(np.log(2 * np.pi * noise ** 2) + tf.square(images - mean) / noise ** 2, axis=1)

    results = {}
    with tf.Graph().as_default(), tf1.Session() as sess:
        tf1.set_random_seed(seed)
        k = tf1.placeholder(tf.int32, [])
        draws = tf.random.normal([k, points, z_dim])
        flow = {'z_dim': z_dim, 'iaf_depth': iaf_depth, 'iaf_width': 8, 'prior_flow_depth': 0, 'prior_flow_width': 8}
        context = tf.constant(rng.normal(size=(points, flow['iaf_width'])), tf.float32) if iaf_depth else None
        posterior = vae.Posterior(tf.constant(q_mean, tf.float32), tf.constant(q_std, tf.float32), context)
        log_weights = vae.importance_log_weights(tf.constant(x, tf.float32), posterior, log_likelihood, draws, flow)
        rng = np.random.RandomState(seed + 1)
        for variable in tf1.global_variables():  # the flow's weights: random, not the near-identity start
            variable.load(0.2 * rng.standard_normal(variable.shape.as_list()).astype(np.float32), sess)
        for value in ks:
            weights = sess.run(log_weights, {k: value}).astype(np.float64)
            results[value] = (weights.mean(axis=0), vae_inference.numpy_log_mean_exp(weights, axis=0))
    return exact, results


def test_iwae_matches_the_exact_likelihood_of_a_linear_gaussian_model():
    exact, results = linear_gaussian_bounds([1, 10, 100, 1000, 20000])
    elbo, iwae = results[20000]
    gap = iwae - exact
    assert abs(gap.mean()) < 3 * gap.std() / np.sqrt(len(gap)), gap  # within its standard error
    assert np.all(np.abs(gap) < 0.1)
    assert np.mean(exact - elbo) > 5  # the ELBO of this q is clearly loose, so the test means something
    means = [results[k][1].mean() for k in (1, 10, 100, 1000)]  # beyond 1000 the bias is below the noise
    assert means == sorted(means), means  # the bound tightens with k


def test_log_mean_exp_is_stable_and_exact():
    assert vae_inference.numpy_log_mean_exp(np.array([1000.0, 1000.0])) == 1000.0
    assert vae_inference.numpy_log_mean_exp(np.array([-1000.0, -1000.0 + math.log(3)])) == \
        pytest.approx(-1000 + math.log(2))
    values = np.random.RandomState(0).normal(size=(50, 4))
    assert np.allclose(vae_inference.numpy_log_mean_exp(values, axis=0), np.log(np.mean(np.exp(values), axis=0)))


def test_bits_per_dim_of_a_gaussian_decoder_is_the_probability_of_the_8_bit_pixels():
    # Bits/dim of 8-bit data: the Gaussian density at the pixels' values, turned into bits/dim, must equal the
    # exact probability of each pixel's bin (Gaussian CDF at its edges, 256 bins over the pixel range).
    rng = np.random.RandomState(0)
    for dataset, offset in (('MNIST', 8), ('celebA', 7)):
        config, _ = command_line.parse_command_line(['--dataset', dataset])
        shape = config_keys.image_shape(config)
        low, high = config_keys.pixel_range(config)
        width = (high - low) / 256
        images = (low + width * (rng.randint(0, 256, size=[2] + shape) + 0.5)).astype(np.float32)  # bin centres
        logits = rng.normal(scale=0.5, size=[2] + shape).astype(np.float32)
        with tf.Graph().as_default(), tf1.Session() as sess:
            nats = -sess.run(vae.log_likelihood(tf.constant(images), tf.constant(logits), config))
        mean = np.tanh(logits) if dataset == 'celebA' else 1 / (1 + np.exp(-logits))
        sigma = math.sqrt(config['kl_weight'] * np.prod(shape) / 2)
        cdf = np.vectorize(lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))))
        bins = cdf((images + width / 2 - mean) / sigma) - cdf((images - width / 2 - mean) / sigma)
        exact_bits = -np.log2(bins).sum(axis=(1, 2, 3)) / np.prod(shape)
        reported = [vae_inference.bits_per_dim(value, config) for value in nats]
        assert np.allclose(reported, exact_bits, atol=1e-3), (dataset, reported, exact_bits)
        assert offset < reported[0] < offset + 2  # the density alone would say under 2 bits/dim
    config, _ = command_line.parse_command_line([])
    assert 'fixed variance sigma^2 = kl_weight * D / 2 = 0.196' in vae_inference.decoder_description(config)


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    rng = np.random.RandomState(0)
    z_means = np.stack([rng.normal(0, 1.0, 1000), rng.normal(0, 0.05, 1000), np.full(1000, 3.0),
                        rng.normal(0, 0.2, 1000)], axis=1)  # variances 1, 0.0025, 0, 0.04
    assert vae_inference.active_units(z_means) == 2


def test_the_gaussian_loss_is_the_negative_elbo_over_kl_weight_up_to_a_constant():
    config, _ = command_line.parse_command_line([])
    rng = np.random.RandomState(0)
    images = rng.uniform(size=(5, 28, 28, 1)).astype(np.float32)
    logits = rng.normal(size=(5, 28, 28, 1)).astype(np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        log_px = sess.run(vae.log_likelihood(tf.constant(images), tf.constant(logits), config))
    mse = np.mean((images - 1 / (1 + np.exp(-logits))) ** 2, axis=(1, 2, 3))
    variance = 0.0005 * 784 / 2
    constant = 0.5 * 784 * np.log(2 * np.pi * variance)
    assert np.allclose(-log_px, mse / config['kl_weight'] + constant, rtol=1e-5)


@pytest.mark.parametrize('likelihood', ['bernoulli', 'gaussian_learned'])
def test_other_likelihoods_train_on_their_negative_elbo(tmp_path, mnist, likelihood):
    extra = ['--binarize', 'true'] if likelihood == 'bernoulli' else ['--decoder_variance', 'global']
    config = tiny_config(tmp_path / 'run', '--likelihood', likelihood, '--num_epoch', '3', *extra)
    losses = vae.train(config, subset(mnist, 3200))
    assert all(np.isfinite(losses)) and losses[2] < losses[0]
    if likelihood == 'gaussian_learned':
        # The variance is learned: from its start at 1 it falls towards the reconstructions' squared error.
        raw = tf.train.load_variable(str(tmp_path / 'run' / 'models' / 'model_2'), 'decoder/log_variance')
        assert raw < -0.02, raw
        return
    assert 100 < losses[0] < 544  # nats per image: below the 784 ln 2 of coin flips
    images = mnist['test_images'][:1000]
    binarised = datasets.evaluation_images(config, images)
    assert set(np.unique(binarised)) == {0.0, 1.0}
    assert np.array_equal(binarised, datasets.evaluation_images(config, images))
    # A Bernoulli draw of each pixel, not a threshold: grey pixels (0.2-0.35) come out 1 in proportion.
    grey = (images > 0.2) & (images < 0.35)
    assert abs(binarised[grey].mean() - images[grey].mean()) < 0.05 and binarised[grey].mean() > 0.15


FAST_2D = RUNS['z_dim_2']


def png_size(path):
    with Image.open(path) as image:
        image.load()
        return image.size


def test_evaluation_and_pictures_end_to_end(tiny_run):
    run = tiny_run('z_dim_2')
    result = run_script('vae_inference.py', *FAST_2D, '--run_directory', run, '--evaluate', '--k', '50',
                        '--num_test', '300', '--interpolate', '--traverse', '--manifold', '--scatter', '--curves')
    assert result.returncode == 0, result.stderr
    assert 'negative IWAE bound, k=50' in result.stdout
    metrics = evaluation_record(run)
    assert metrics['test_images'] == 300 and metrics['iwae_k'] == 50 and metrics['checkpoint'] == 'model_1'
    assert metrics['negative_iwae_nats'] <= metrics['negative_elbo_nats']
    assert 0 < metrics['negative_iwae_nats_standard_error'] < 10
    assert 8 < metrics['negative_elbo_bits_per_dim'] < 9  # discretised: 8 bits/dim for 8-bit pixels, and a little
    assert 0 <= metrics['active_units'] <= 2 and metrics['kl_nats'] > 0
    assert metrics['decoder'].startswith('gaussian, fixed variance')
    side = 28 * 2
    assert png_size(run / 'interpolation_model_1-n300.png') == (12 * side, 8 * side + 16)
    assert png_size(run / 'traversal_model_1-n300.png') == (11 * side, 2 * side + 16)  # z_dim 2: both dimensions
    assert png_size(run / 'manifold_model_1.png') == (20 * side, 20 * side + 16)
    assert png_size(run / 'latent_scatter_model_1-n300.png') == (600, 550)
    assert png_size(run / 'training_curves.png')[0] >= 1200  # loss, reconstruction, KL and test ELBO panels


def test_evaluating_with_the_wrong_likelihood_or_manifold_on_a_wide_latent_fails_clearly(tiny_run):
    run = tiny_run('z_dim_2')
    result = run_script('vae_inference.py', *FAST_2D, '--run_directory', run, '--evaluate', '--likelihood',
                        'bernoulli')
    assert result.returncode == 1
    assert 'trained with likelihood=gaussian but --likelihood says bernoulli' in result.stderr
    result = run_script('vae_inference.py', *TINY, '--run_directory', run, '--manifold')  # TINY's z_dim is 4
    assert result.returncode == 1 and 'was trained with z_dim=2 but --z_dim says 4' in result.stderr
    assert not os.path.exists(run / 'evaluations')
