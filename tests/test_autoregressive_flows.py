"""The autoregressive flows (autoregressive_flows.py): the IAF posterior's masks and log-determinant against a
numerical Jacobian, the MAF prior's density against quadrature and its samples against its density, the
importance-weighted bound with both flows against exact and quadrature likelihoods, and flow runs end to end."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import command_line
import config_keys
import autoregressive_flows
import vae
import vae_inference
from conftest import BERNOULLI, MNIST_DIR, evaluation_record, run_script
import test_saved_model
from test_metrics import linear_gaussian_bounds

tf1 = tf.compat.v1
MNIST = ['--data_directory', MNIST_DIR]


def randomised(sess, scale, seed=0):
    """Every variable of the graph set to scale * N(0, 1): a flow far from its near-identity start, so the tests
    see its masks and gates at work."""
    rng = np.random.RandomState(seed)
    for variable in tf1.global_variables():
        variable.load(scale * rng.standard_normal(variable.shape.as_list()).astype(np.float32), sess)


def numerical_jacobian(function, x, epsilon=1e-2):
    """[batch, out, in] central differences of a batched function of [batch, in] float64 inputs."""
    columns = []
    for i in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, i] = epsilon
        columns.append((function(x + step) - function(x - step)) / (2 * epsilon))
    return np.stack(columns, axis=2)


def numpy_function(build, z_dim=4, context_units=16, batch=6, seed=0, scale=0.2):
    """(f, log_gates): build(z0, context) -> (z, log_gates) of randomised weights, as numpy functions of z0."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)  # (op determinism, when another test turned it on, wants seeded initialisers)
        z0 = tf1.placeholder(tf.float32, [None, z_dim])
        context = tf.constant(np.random.RandomState(seed + 1).standard_normal((batch, context_units)), tf.float32)
        z, log_gates = build(z0, context)
        sess = tf1.Session(graph=graph)
        randomised(sess, scale, seed)
    run = lambda tensor, x: sess.run(tensor, {z0: x.astype(np.float32)}).astype(np.float64)
    return (lambda x: run(z, x)), (lambda x: run(log_gates, x))


def test_one_step_is_autoregressive_in_its_order_with_the_gates_on_the_diagonal():
    x = np.random.RandomState(2).standard_normal((6, 4))
    upper = np.triu(np.ones((4, 4)), 1).astype(bool)  # [output, input] pairs with the input after the output
    for reverse in (False, True):
        f, log_gates = numpy_function(lambda z0, context: autoregressive_flows.iaf_step(z0, context, 16, reverse, "step"))
        jacobian = numerical_jacobian(f, x)
        later = upper.T if reverse else upper  # in the reversed order, the inputs after an output are below it
        assert np.abs(jacobian[:, later]).max() < 1e-3, (reverse, jacobian[0])
        assert np.allclose(np.diagonal(jacobian, axis1=1, axis2=2), np.exp(log_gates(x)), atol=2e-3)
        assert np.abs(jacobian[:, ~later & ~np.eye(4, dtype=bool)]).max(axis=0).min() > 1e-3  # earlier ones are seen


def test_the_flows_log_determinant_is_the_numerical_jacobians():
    x = np.random.RandomState(3).standard_normal((6, 4))
    f, log_gates = numpy_function(lambda z0, context: autoregressive_flows.posterior_flow(z0, context, 4, 16))
    _, numerical = np.linalg.slogdet(numerical_jacobian(f, x))
    found = log_gates(x).sum(axis=1)
    assert np.allclose(found, numerical, atol=2e-3), (found, numerical)
    assert np.ptp(found) > 0.1  # the determinant depends on z: a test of more than a constant


def test_made_masks_connect_each_output_to_exactly_the_inputs_before_it():
    for reverse in (False, True):
        first, hidden, last = autoregressive_flows.made_masks(5, 12, reverse)
        reaches = (first @ hidden @ last) > 0  # [input, output]: is there a path?
        order = np.arange(5)[::-1] if reverse else np.arange(5)
        position = np.argsort(order)
        assert np.array_equal(reaches, position[:, None] < position[None, :])


def test_the_bound_of_a_flow_posterior_matches_the_exact_likelihood():
    """The importance-weighted bound with an IAF q(z|x) (randomised weights) is log p(x) within its standard error
    at large k: log q includes the flow's log-determinant (dropping it biases the bound by nats)."""
    exact, results = linear_gaussian_bounds([1, 20000], iaf_depth=2)
    elbo, bound = results[20000]
    gap = bound - exact
    assert abs(gap.mean()) < 3 * gap.std() / np.sqrt(len(gap)) + 1e-3, gap.mean()
    assert np.all(np.abs(gap) < 0.25), np.abs(gap).max()
    assert np.mean(exact - elbo) > 1  # the flow's q is not the posterior: the ELBO is clearly loose


def prior_functions(depth=2, width=8, z_dim=2, scale=0.4, seed=0):
    """(log_density, sample, weights) of a MAF prior of randomised weights: numpy functions of [n, z_dim] arrays,
    and its variables' values by name."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        z = tf1.placeholder(tf.float32, [None, z_dim])
        log_density = tf.reduce_sum(autoregressive_flows.prior_log_density(z, depth, width), axis=1)
        sample = autoregressive_flows.prior_sample(z, depth, width)
        sess = tf1.Session(graph=graph)
        randomised(sess, scale, seed)
        weights = {v.name: sess.run(v) for v in tf1.global_variables()}
    run = lambda tensor, x: sess.run(tensor, {z: x.astype(np.float32)}).astype(np.float64)
    return (lambda x: run(log_density, x)), (lambda u: run(sample, u)), weights


def grid(low, high, points, z_dim=2):
    """[points ** z_dim, z_dim] centres of a regular grid over [low, high]^z_dim, and each cell's volume."""
    axis = np.linspace(low, high, points)
    return np.stack(np.meshgrid(*[axis] * z_dim, indexing='ij'), -1).reshape(-1, z_dim), (axis[1] - axis[0]) ** z_dim


def test_the_maf_prior_is_a_density_and_its_samples_follow_it():
    log_density, sample, _ = prior_functions()
    z, cell = grid(-9, 9, 721)
    assert np.exp(log_density(z)).sum() * cell == pytest.approx(1, abs=2e-3)  # it integrates to 1 (quadrature)
    normal = -np.log(2 * np.pi) - 0.5 * np.sum(z ** 2, axis=1)
    assert np.abs(log_density(z) - normal)[np.sum(z ** 2, axis=1) < 4].max() > 0.5  # and it is not N(0, I)
    # Its samples are where its mass is: the fraction of 20,000 draws in each of 4 boxes is the box's integral.
    draws = sample(np.random.RandomState(1).standard_normal((20000, 2)))
    for low, high in (([-0.5, -1.0], [1.0, 0.5]), ([0, 0], [9, 9]), ([-9, -9], [-0.5, 0.3]), ([-1, 1], [0.5, 3])):
        inside = lambda points: np.all((points > low) & (points < high), axis=1)
        mass = np.exp(log_density(z[inside(z)])).sum() * cell
        assert abs(inside(draws).mean() - mass) < 4 * np.sqrt(mass * (1 - mass) / len(draws)) + 2e-3, (low, mass)


def test_the_maf_priors_density_is_its_samples_change_of_variables_in_five_dimensions():
    """log p(z) of a sample z = f(u) is log N(u; 0, I) - log |det df/du|, with the Jacobian taken numerically: in 5
    dimensions, where the masks' hidden degrees differ (in 2 every hidden unit sees the first dimension alone)."""
    log_density, sample, _ = prior_functions(depth=3, width=16, z_dim=5, scale=0.3, seed=4)
    u = np.random.RandomState(5).standard_normal((6, 5))
    _, log_det = np.linalg.slogdet(numerical_jacobian(sample, u, epsilon=1e-3))
    expected = -0.5 * np.sum(np.log(2 * np.pi) + u ** 2, axis=1) - log_det
    np.testing.assert_allclose(log_density(sample(u)), expected, atol=2e-3)
    assert np.abs(log_det).min() > 0.05  # the flow is not volume-preserving here: the test sees its log-determinant


def test_the_bound_with_both_flows_matches_quadrature_on_a_two_dimensional_model():
    """z ~ the MAF prior (random weights), x | z ~ N(W z + b, s^2 I); q(z|x) an IAF of random weights. log p(x) by
    quadrature over a grid of z; the importance-weighted bound at k = 20,000 matches it within its standard error
    (without the posterior flow's log-determinant it misses by about a nat: seen by breaking it)."""
    rng = np.random.RandomState(0)
    z_dim, x_dim, noise, points = 2, 3, 0.7, 20
    w, b = rng.normal(size=(x_dim, z_dim)), rng.normal(size=x_dim)
    config = {'z_dim': z_dim, 'iaf_depth': 2, 'iaf_width': 8, 'prior_flow_depth': 2, 'prior_flow_width': 8}
    log_density, sample, prior_weights = prior_functions(z_dim=z_dim)
    z_true = sample(rng.standard_normal((points, z_dim)))
    x = z_true @ w.T + b + noise * rng.normal(size=(points, x_dim))
    log_likelihood = lambda z: -0.5 * np.sum(np.log(2 * np.pi * noise ** 2) + (x[:, None] - (z @ w.T + b)) ** 2
                                             / noise ** 2, axis=-1)  # [points, grid]
    z, cell = grid(-9, 9, 401)
    joint = log_likelihood(z) + log_density(z)[None]
    exact = np.logaddexp.reduce(joint, axis=1) + np.log(cell)
    mean = (np.exp(joint - joint.max(1, keepdims=True)) @ z) / np.exp(joint - joint.max(1, keepdims=True)).sum(1)[:, None]

    with tf.Graph().as_default(), tf1.Session() as sess:
        tf1.set_random_seed(0)
        k = tf1.placeholder(tf.int32, [])
        draws = tf.random.normal([k, points, z_dim])
        posterior = vae.Posterior(tf.constant(mean + 0.2, tf.float32), tf.fill([points, z_dim], 1.2),
                                  tf.constant(rng.normal(size=(points, 8)), tf.float32))
        tf_w, tf_b = tf.constant(w.T, tf.float32), tf.constant(b, tf.float32)
        decode = lambda images, latents: -0.5 * tf.reduce_sum(
            np.log(2 * np.pi * noise ** 2) + tf.square(images - tf.matmul(latents, tf_w) - tf_b) / noise ** 2, 1)
        log_weights = vae.importance_log_weights(tf.constant(x, tf.float32), posterior, decode, draws, config)
        randomised(sess, 0.2, seed=3)  # the posterior flow's weights, then the prior's: the quadrature's
        prior = [v for v in tf1.global_variables() if v.name.startswith('prior_flow/')]
        assert sorted(v.name for v in prior) == sorted(prior_weights)
        for variable in prior:
            variable.load(prior_weights[variable.name], sess)
        weights = sess.run(log_weights, {k: 20000}).astype(np.float64)
    bound = vae_inference.numpy_log_mean_exp(weights, axis=0)
    gap = bound - exact
    assert abs(gap.mean()) < 3 * gap.std() / np.sqrt(points) + 0.01, (gap.mean(), gap)
    assert np.all(np.abs(gap) < 0.1), gap


def iaf_flags(run):  # both flows: an IAF posterior and a MAF prior
    return [*BERNOULLI, '--iaf_depth', '2', '--iaf_width', '16', '--prior_flow_depth', '2', '--prior_flow_width', '16',
            '--run_directory', str(run)]


@pytest.fixture(scope='module')
def iaf_run(tmp_path_factory):
    run = tmp_path_factory.mktemp('iaf') / 'run'
    result = run_script('vae.py', *iaf_flags(run))
    assert result.returncode == 0, result.stderr
    return run, result


def test_an_iaf_run_trains_records_its_flow_and_is_scored_with_it(iaf_run):
    run, result = iaf_run
    saved = json.load(open(os.path.join(run, 'config.json')))
    assert [saved[key] for key in ('iaf_depth', 'iaf_width', 'prior_flow_depth', 'prior_flow_width')] == [2, 16, 2, 16]
    config, _ = command_line.parse_command_line(['--run_directory', str(run)], from_run=True)
    assert (config['iaf_depth'], config['iaf_width']) == (2, 16)  # restored from config.json alone
    assert run_script('vae_inference.py', '--run_directory', str(run), '--evaluate', '--k', '50', '--num_test', '100',
                      *MNIST).returncode == 0
    record = evaluation_record(run)
    assert record['negative_iwae_nats'] < record['negative_elbo_nats']
    assert record['posterior'] == 'IAF, 2 steps of 16 units' and record['prior'] == 'MAF, 2 steps of 16 units'
    result = run_script('vae_inference.py', '--run_directory', str(run), *MNIST)  # the pictures, from the MAF prior
    assert result.returncode == 0 and os.path.isfile(os.path.join(run, 'generations_model_1.png')), result.stderr
    # The flow is in the graph the bound is computed in: with its gates forced to 1 (the identity) the bound moves.
    sess, outputs, _ = vae_inference.restore(config)
    with sess:
        images = np.random.RandomState(0).binomial(1, 0.3, (8, 28, 28, 1)).astype(np.float32)
        feed = {outputs.images: images, outputs.k: 4}
        before = sess.run(outputs.log_weights, feed)
        centre = sess.run(outputs.z_mean, {outputs.images: images})
        gate_biases = [v for v in tf1.global_variables() if v.name.startswith('iaf/') and '/gate/b' in v.name]
        assert len(gate_biases) == 2
        for v in gate_biases:
            v.load(np.full(v.shape.as_list(), 50.0, np.float32), sess)
        after = sess.run(outputs.log_weights, feed)
        base_mean = sess.run(sess.graph.get_tensor_by_name('encoder/z_mean/add:0'), {outputs.images: images})
        assert np.allclose(sess.run(outputs.z_mean, {outputs.images: images}), base_mean, atol=1e-5)
    assert not np.allclose(before, after)
    assert not np.allclose(centre, base_mean, atol=1e-3)  # the code reconstructions decode is the flow's


def test_an_iaf_run_refuses_draws_of_a_gaussian_posterior_and_a_changed_flow(iaf_run):
    run, _ = iaf_run
    result = run_script('vae_inference.py', '--run_directory', str(run), '--fid', '--sampler', 'gmm', '--fit_to',
                        'samples', *MNIST)
    assert result.returncode == 1 and result.stderr.startswith('error: --fit_to samples') and \
        len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = run_script('vae.py', *iaf_flags(run), '--iaf_depth', '3', '--num_epoch', '3')
    assert result.returncode == 1 and 'iaf_depth=2' in result.stderr, result.stderr


def test_an_older_run_folder_without_the_flow_keys_is_read_as_one_without_a_flow(tmp_path):
    run = tmp_path / 'run'
    os.makedirs(run / 'models')
    open(run / 'models' / 'model_0.index', 'w').close()  # a checkpoint's listing: config.json decides the model
    config, _ = command_line.parse_command_line(BERNOULLI + ['--run_directory', str(run)])
    record = {key: config[key] for key in config
              if key in config_keys.KEY_TYPES and key not in config_keys.LATER_KEYS}
    json.dump(record, open(run / 'config.json', 'w'))
    config, _ = command_line.parse_command_line(['--run_directory', str(run), '--dataset', 'MNIST_flows'],
                                                from_run=True)  # (a preset with both flows: not what decides)
    assert [config[key] for key in ('iaf_depth', 'iaf_width', 'prior_flow_depth', 'prior_flow_width')] == \
        [0, 320, 0, 320]
    with pytest.raises(Exception, match='iaf_depth=0'):
        command_line.parse_command_line(['--run_directory', str(run), '--iaf_depth', '2'], from_run=True)


def test_the_model_weights_count_the_flow():
    config, _ = command_line.parse_command_line(['--dataset', 'MNIST_bernoulli', '--iaf_depth', '2', '--iaf_width',
                                                 '64', '--prior_flow_depth', '3', '--prior_flow_width', '48'])
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        vae.build_vae(tf1.placeholder(tf.float32, [None, 28, 28, 1]), config, training=True)
        found = sum(int(np.prod(v.shape)) for v in tf1.trainable_variables() if v.shape.ndims >= 2)
    assert config_keys.model_weights(config) == found


@pytest.mark.slow
@pytest.mark.process  # the SavedModel in a plain-TensorFlow child, without the repository
def test_the_saved_model_of_an_iaf_run_encodes_and_bounds_with_the_flow(iaf_run, tmp_path):
    run, _ = iaf_run
    folder = tmp_path / 'exported'
    assert run_script('vae_inference.py', '--run_directory', str(run), '--saved_model', folder).returncode == 0
    config, sess, outputs, _ = test_saved_model.restored(run)
    images, k = test_saved_model.first_test_images(config, 10), 9
    z = np.random.RandomState(0).standard_normal((6, config['z_dim'])).astype(np.float32)
    np.savez(tmp_path / 'inputs.npz', images=images, z=z, k=k)
    child = subprocess.run([sys.executable, '-I', '-c', test_saved_model.PLAIN_TENSORFLOW, folder,
                            tmp_path / 'inputs.npz', tmp_path / 'outputs.npz'], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    found = dict(np.load(tmp_path / 'outputs.npz'))
    with tf.Graph().as_default(), tf1.Session() as noise_session:  # the signature's noise of seed (3, 4)
        noise = noise_session.run(tf.random.stateless_normal([7, config['z_dim']], tf.constant([3, 4], tf.int64)))
    with sess:
        test_saved_model.assert_vae_inferences_numbers(sess, outputs, config, images, z, k, found)
        prior_z = vae.prior_latents(sess, outputs, noise)
    np.testing.assert_allclose(found['sample_z'], prior_z, rtol=1e-5, atol=1e-5)  # drawn through the MAF prior
    assert np.abs(prior_z - noise).max() > 1e-3


def test_a_flow_checkpoint_is_never_restored_as_a_model_without_its_flows(iaf_run, tmp_path):
    """A config.json that lacks the flows (an older one, or edited) over a flow run's checkpoints: restoring would
    drop the flows' weights without a word, and training on would save a model without them. Both are refused."""
    run, _ = iaf_run
    copy = tmp_path / 'run'
    shutil.copytree(run, copy)
    saved = json.load(open(copy / 'config.json'))
    json.dump({key: value for key, value in saved.items() if key not in config_keys.LATER_KEYS},
              open(copy / 'config.json', 'w'))
    before = sorted(os.listdir(copy / 'models'))
    for script, flags in (('vae_inference.py', ['--evaluate', '--k', '2', '--num_test', '10']),
                          ('vae.py', ['--num_epoch', '3'])):
        result = run_script(script, '--run_directory', str(copy), *MNIST, *flags)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert 'holds encoder/context/b (and 37 more weights) that the configured model lacks' in result.stderr
    assert sorted(os.listdir(copy / 'models')) == before


def test_flow_keys_out_of_reach_are_refused_in_one_line(tmp_path):
    for flags, message in ((['--iaf_depth', '33'], 'iaf_depth must be at most 32 steps'),
                           (['--prior_flow_width', '64'], '--prior_flow_width applies only with prior_flow_depth'),
                           (['--iaf_depth', '1', '--iaf_width', '100000'], 'lower --z_dim, --kernel_size, the filters '
                                                                           'or the flows')):
        result = run_script('vae.py', '--run_directory', str(tmp_path / 'run'), *MNIST, *flags)
        assert result.returncode == 1 and result.stderr.startswith('error: ') and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / 'run')
