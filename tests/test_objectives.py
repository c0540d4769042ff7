"""Training objectives: KL schedules, free bits, the IWAE objective, learning-rate decay, and an evaluation
that can be interrupted."""
import json
import os
import re
import signal

import numpy as np
import pytest
import tensorflow as tf

import config_keys
import datasets
import process
import run_folder
import vae
import vae_inference
from conftest import subset, tiny_config

tf1 = tf.compat.v1
BERNOULLI = ['--likelihood', 'bernoulli', '--binarize', 'true']


def values_at_steps(config, steps_per_epoch, steps):
    """(KL weight, learning rate) of the training graph at each global step."""
    with tf.Graph().as_default():
        model = vae.build_training_graph(config, steps_per_epoch)
        step = tf1.placeholder(tf.int64, [])
        assign = tf1.assign(model.global_step, step)
        with tf1.Session() as sess:
            sess.run(model.init)
            results = []
            for value in steps:
                sess.run(assign, {step: value})
                results.append(sess.run([model.annealing, model.learning_rate]))
    return np.array(results)


def test_kl_schedules_and_learning_rate_decay_at_chosen_steps(tmp_path):
    steps = [0, 5, 20, 39, 40, 55, 100, 1000]  # 10 steps an epoch
    epochs = np.array(steps) / 10
    constant = values_at_steps(tiny_config(tmp_path), 10, steps)
    assert np.all(constant[:, 0] == 1) and np.all(constant[:, 1] == np.float32(0.0005))

    linear = values_at_steps(tiny_config(tmp_path, '--kl_schedule', 'linear', '--kl_warmup_epochs', '4',
                                         '--learning_rate_decay', '0.5'), 10, steps)
    assert np.allclose(linear[:, 0], [0, 0.125, 0.5, 0.975, 1, 1, 1, 1])
    assert np.allclose(linear[:, 1], 0.0005 * 0.5 ** epochs)

    cyclical = values_at_steps(tiny_config(tmp_path, '--kl_schedule', 'cyclical', '--kl_cycle_epochs', '4',
                                           '--kl_cycle_ramp', '0.5'), 10, steps)
    # Each 4-epoch cycle rises from 0 over its first 2 epochs, then holds 1.
    assert np.allclose(cyclical[:, 0], [0, 0.25, 1, 1, 0, 0.75, 1, 0])


def test_a_resumed_run_goes_on_with_the_schedule_where_it_stopped(tmp_path, mnist, capsys):
    data = subset(mnist, 640)  # 10 steps of 64 images an epoch
    args = ['--kl_schedule', 'linear', '--kl_warmup_epochs', '3', '--summary_every', '1']
    vae.train(tiny_config(tmp_path / 'run', *args, '--num_epoch', '1'), data)
    vae.train(tiny_config(tmp_path / 'run', *args, '--num_epoch', '4'), data)  # resumes at step 10
    steps, weights = vae_inference.read_training_curves(str(tmp_path / 'run' / 'logs'))['kl_coefficient']
    assert list(steps) == list(range(40))
    # For the gaussian likelihood the logged weight is the one in the loss: schedule x kl_weight.
    assert np.allclose(weights, np.minimum(1, steps / 30) * 0.0005)
    printed = [float(weight) for weight in re.findall(r'kl annealing (\S+)', capsys.readouterr().out)]
    assert np.allclose(printed, [9 / 30, 19 / 30, 29 / 30, 1], atol=1e-4)  # each epoch's last step


@pytest.mark.slow  # trains for 7-11 s: the fast tier stays under 3 minutes
def test_iwae_start_epoch_trains_the_elbo_first_then_the_iwae_bound_and_resumes_in_either(tmp_path, mnist,
                                                                                        monkeypatch, capsys):
    built = []  # (objective, train_samples, num_epoch) of each training graph

    def recording(config, *args, **kwargs):
        built.append((config['objective'], config['train_samples'], config['num_epoch']))
        return build_training_graph(config, *args, **kwargs)

    build_training_graph = vae.build_training_graph
    monkeypatch.setattr(vae, 'build_training_graph', recording)
    data = subset(mnist, 640)  # 10 steps of 64 images an epoch
    args = [*BERNOULLI, '--objective', 'iwae', '--train_samples', '3', '--iwae_start_epoch', '2', '--save_every', '1']
    run = tmp_path / 'run'
    vae.train(tiny_config(run, *args, '--num_epoch', '3'), data)
    assert built == [('elbo', 1, 2), ('iwae', 3, 3)]
    printed = capsys.readouterr().out
    assert re.findall(r'^epoch +(\d+)', printed, re.M) == ['0', '1', '2']
    assert 'resuming' in printed.split('objective: the IWAE bound of 3 samples from epoch 2')[1]  # from model_1
    saved = json.load(open(run / 'config.json'))  # the run's own settings, not the ELBO phase's
    assert (saved['objective'], saved['train_samples'], saved['iwae_start_epoch'], saved['num_epoch']) == \
        ('iwae', 3, 2, 3)

    built.clear()  # going on: the ELBO phase has ended, the IWAE one resumes at step 30
    vae.train(tiny_config(run, *args, '--num_epoch', '4'), data)
    assert built == [('elbo', 1, 2), ('iwae', 3, 4)]
    printed = capsys.readouterr().out
    assert re.findall(r'^epoch +(\d+)', printed, re.M) == ['3'] and 'step 30)' in printed
    assert run_folder.latest_checkpoint(tiny_config(run))[1] == 40

    built.clear()  # a run that ends before the switch is all ELBO, and says so
    vae.train(tiny_config(tmp_path / 'short', *args, '--num_epoch', '2'), data)
    assert built == [('elbo', 1, 2)] and 'the one-sample ELBO for all 2 epochs' in capsys.readouterr().out

    # A cluster cannot switch graphs together: refused before anything is built or written.
    cluster = {'ps': ['127.0.0.1:1'], 'worker': ['127.0.0.1:2', '127.0.0.1:3']}
    monkeypatch.setattr(vae.deploy, 'start_server', lambda *_: pytest.fail('the cluster was started'))
    with pytest.raises(process.UserError, match='needs one process.*--objective elbo --num_epoch 2'):
        vae.train(tiny_config(tmp_path / 'cluster', *args, '--num_epoch', '3'), data, cluster)
    assert not (tmp_path / 'cluster').exists()


@pytest.mark.parametrize('likelihood', [BERNOULLI, ['--likelihood', 'gaussian']])
def test_iwae_objective_with_one_sample_is_the_elbo_loss_and_tighter_with_more(tmp_path, likelihood, mnist):
    images = mnist['test_images'][:16]

    def loss(objective, samples):
        config = tiny_config(tmp_path, *likelihood, '--objective', objective, '--train_samples', str(samples))
        with tf.Graph().as_default():
            tf1.set_random_seed(3)
            model = vae.build_vae(tf.constant(images), config, training=True)
            with tf1.Session() as sess:
                sess.run(tf1.global_variables_initializer())
                return sess.run(model.loss)

    assert loss('iwae', 1) == loss('elbo', 1)  # exactly: the same samples, and the added term is 0
    # With 4 samples the same draws give log mean exp >= mean of the log weights: a lower loss.
    assert loss('iwae', 4) < loss('elbo', 4)


def test_free_bits_stop_the_gradient_of_dimensions_below_the_threshold():
    z_mean = tf.constant([[0.1, 2.0, 0.0], [-0.1, 2.0, 0.5]])  # batch-mean KL 0.005, 2.0, 0.0625 nats
    z_std = tf.ones_like(z_mean)
    term = vae.kl_term(vae.kl_per_dimension(z_mean, z_std), free_bits=0.1)
    gradient = tf.gradients(term, z_mean)[0]
    with tf1.Session() as sess:
        value, gradient = sess.run([term, gradient])
    assert value == pytest.approx(0.1 + 2.0 + 0.1)
    assert np.all(gradient[:, [0, 2]] == 0)  # below 0.1 nats: free
    assert np.all(gradient[:, 1] != 0)
    with tf1.Session() as sess:  # without free bits, the plain KL and its gradient
        assert sess.run(vae.kl_term(vae.kl_per_dimension(z_mean, z_std), free_bits=0)) == \
            pytest.approx(0.005 + 2.0 + 0.0625)


def test_the_test_elbo_printed_at_each_save_weighs_the_kl_by_one(tmp_path, mnist, capsys):
    # A warm-up so long that the KL's weight stays below 0.001: the training loss nearly ignores the KL.
    config = tiny_config(tmp_path / 'run', *BERNOULLI, '--num_epoch', '1', '--kl_schedule', 'linear',
                         '--kl_warmup_epochs', '1000', '--learning_rate', '0.005', '--z_dim', '16')
    data = subset(mnist, 6400)
    vae.train(config, data)
    printed = float(re.search(r'test negative ELBO (\S+) nats', capsys.readouterr().out).group(1))
    sess, outputs, _ = vae_inference.restore(config)
    with sess:
        test_images = datasets.evaluation_images(config, data['test_images'])
        elbo, _ = vae_inference.importance_weighted_bound(sess, outputs, config, test_images, 200)
        kl = vae.run_in_batches(sess, outputs.kl_per_dimension, outputs.images, test_images).sum(axis=1).mean()
    assert kl > 5, kl  # so a bound with the annealed KL would be off by more than the tolerance
    assert abs(printed - -elbo.mean()) < 0.2 * kl, (printed, -elbo.mean(), kl)


class InterruptedSession:
    """A session whose run raises KeyboardInterrupt on its `after`-th call, as Ctrl-C would."""
    def __init__(self, sess, after):
        self.sess, self.calls, self.after = sess, 0, after

    def run(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt
        return self.sess.run(*args, **kwargs)


def untrained_inference(config):
    """A session holding the inference graph with freshly initialised weights (the bound's arithmetic is the same)."""
    with tf.Graph().as_default() as graph:
        outputs = vae.build_inference_graph(config)
        init = tf1.global_variables_initializer()
    sess = tf1.Session(graph=graph)
    sess.run(init)
    return sess, outputs


def test_an_interrupted_evaluation_goes_on_to_the_numbers_of_an_unbroken_one(tmp_path, mnist, monkeypatch):
    monkeypatch.setattr(vae_inference, 'SAVE_SECONDS', 0)  # save the progress after every run
    config = tiny_config(tmp_path, *BERNOULLI)
    images = datasets.evaluation_images(config, mnist['test_images'][:12])
    monkeypatch.setattr(vae_inference, 'IWAE_MEMORY', vae_inference.IWAE_MEMORY // 2 ** 10)
    k = config_keys.decodes_per_run(config, vae_inference.IWAE_MEMORY) * 3 // 2  # each image in two chunks of samples
    sess, outputs = untrained_inference(config)
    progress = str(tmp_path / 'progress.npz')
    with sess:
        unbroken = vae_inference.importance_weighted_bound(sess, outputs, config, images, k)
        with pytest.raises(KeyboardInterrupt):
            vae_inference.importance_weighted_bound(InterruptedSession(sess, 7), outputs, config, images, k, progress)
        with np.load(progress) as saved:
            assert int(saved['done']) == 3  # the six session.runs before the interruption scored three images
        resumed = vae_inference.importance_weighted_bound(sess, outputs, config, images, k, progress)
    assert np.array_equal(unbroken[0], resumed[0]) and np.array_equal(unbroken[1], resumed[1])
    assert np.all(unbroken[1] >= unbroken[0])  # the IWAE bound is above the ELBO estimate


class SignalledSession(InterruptedSession):
    """A session that sends this process SIGINT during its `after`-th run, as Ctrl-C would during a long k."""
    def run(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.after:
            os.kill(os.getpid(), signal.SIGINT)
        return self.sess.run(*args, **kwargs)


def test_ctrl_c_in_the_middle_of_one_images_samples_stops_there_and_goes_on(tmp_path, mnist, monkeypatch):
    config = tiny_config(tmp_path, *BERNOULLI)
    images = datasets.evaluation_images(config, mnist['test_images'][:2])
    monkeypatch.setattr(vae_inference, 'IWAE_MEMORY', vae_inference.IWAE_MEMORY // 2 ** 10)
    k = config_keys.decodes_per_run(config, vae_inference.IWAE_MEMORY) * 3  # each image in three session.runs
    sess, outputs = untrained_inference(config)
    progress = str(tmp_path / 'progress.npz')
    with sess:
        unbroken = vae_inference.importance_weighted_bound(sess, outputs, config, images, k)
        with pytest.raises(SystemExit) as stopped:  # during the first image's second run: stops before its third
            vae_inference.importance_weighted_bound(SignalledSession(sess, 2), outputs, config, images, k, progress)
        assert stopped.value.code == 128 + signal.SIGINT
        with np.load(progress) as saved:
            assert int(saved['done']) == 0
        resumed = vae_inference.importance_weighted_bound(sess, outputs, config, images, k, progress)
    assert np.array_equal(unbroken[0], resumed[0]) and np.array_equal(unbroken[1], resumed[1])


def test_clip_gradient_norm_bounds_the_gradient_adam_is_given(tmp_path, mnist):
    """Adam's first moment after one step is (1 - beta1) times the gradient it was given: its global norm is 0.1 x
    the gradient's norm unclipped, and 0.1 x clip_gradient_norm when the gradient was larger."""
    batch = datasets.evaluation_images(tiny_config(tmp_path), mnist['train_images'][:64])

    def first_moment_norm(*flags):
        config = tiny_config(tmp_path, *flags)
        with tf.Graph().as_default():
            model = vae.build_training_graph(config, 10)
            moments = [model.optimizer.get_slot(v, 'm') for v in tf1.trainable_variables()]
            with tf1.Session() as sess:
                sess.run(model.init)
                sess.run(model.train_op, {model.images: batch})
                return sess.run(tf.linalg.global_norm(moments))

    unclipped = first_moment_norm()
    assert unclipped > 0.1 * 0.05 * 2  # the tiny model's first gradient is well above the clip below
    assert first_moment_norm('--clip_gradient_norm', '0.05') == pytest.approx(0.1 * 0.05, rel=1e-4)
    assert first_moment_norm('--clip_gradient_norm', '1e6') == pytest.approx(unclipped, rel=1e-4)
