"""The graph: layer shapes, the KL term, learning on real MNIST, checkpoints and seeding."""
import ast
import os

import numpy as np
import pytest
import tensorflow as tf

import command_line
import config_keys
import vae
import vae_inference
from conftest import ROOT, subset, tiny_config

tf1 = tf.compat.v1


def test_layer_shapes_of_the_mnist_model():
    config, _ = command_line.parse_command_line([])  # the shipped MNIST config, full size
    assert config_keys.encoder_output_shape(config) == (4, 4, 64)
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        images = tf1.placeholder(tf.float32, [None, 28, 28, 1])
        model = vae.build_vae(images, config, training=True)
        ops = {op.name: op for op in tf1.get_default_graph().get_operations()}
        shape = lambda name: ops[name].outputs[0].shape.as_list()[1:]
        assert shape('encoder/conv0/Conv2D') == [14, 14, 16]
        assert shape('encoder/conv1/Conv2D') == [7, 7, 32]
        assert shape('encoder/conv2/Conv2D') == [4, 4, 64]
        assert shape('decoder/deconv0/EnsureShape') == [8, 8, 64]
        assert shape('decoder/deconv1/EnsureShape') == [16, 16, 32]
        assert shape('decoder/deconv2/EnsureShape') == [32, 32, 1]
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            batch = np.random.RandomState(0).rand(3, 28, 28, 1).astype(np.float32)
            z_mean, z_std, reconstruction = sess.run(
                [model.z_mean, model.z_std, model.reconstruction], {images: batch})
    assert z_mean.shape == z_std.shape == (3, 16)
    assert (z_std > 0).all()
    assert reconstruction.shape == (3, 28, 28, 1)
    assert 0 <= reconstruction.min() and reconstruction.max() <= 1


def test_kl_divergence_matches_monte_carlo():
    rng = np.random.RandomState(1)
    mean = rng.normal(size=(4, 3)).astype(np.float32)
    std = rng.uniform(0.3, 2.0, size=(4, 3)).astype(np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        closed_form = sess.run(vae.kl_divergence(tf.constant(mean), tf.constant(std)))
    # KL = E_q[log q(z) - log p(z)], estimated from samples of q.
    samples = mean + std * rng.normal(size=(400000, 4, 3))
    log_q = -0.5 * (((samples - mean) / std) ** 2) - np.log(std)
    log_p = -0.5 * samples ** 2
    terms = (log_q - log_p).sum(axis=2)
    estimate, standard_error = terms.mean(axis=0), terms.std(axis=0) / np.sqrt(len(terms))
    assert np.all(np.abs(closed_form - estimate) < 4 * standard_error + 1e-3), (closed_form, estimate)


@pytest.mark.slow
def test_loss_falls_on_real_mnist(tmp_path, mnist):
    config = tiny_config(tmp_path / 'run', '--num_epoch', '3', '--encoder_filters', '8,16,16',
                         '--decoder_filters', '16,8,1')
    losses = vae.train(config, subset(mnist, 6400))  # 3 epochs of 100 steps
    assert len(losses) == 3
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.8 * losses[0]


def test_restored_checkpoint_reproduces_reconstructions_bit_for_bit(tmp_path, mnist):
    config = tiny_config(tmp_path / 'run')
    data = subset(mnist, 640)
    images = mnist['test_images'][:50]
    with tf.Graph().as_default() as graph:
        model = vae.build_training_graph(config, len(data['train']) // config['batch_size'], data['train'])
    graph.finalize()
    with tf1.Session(graph=graph) as sess:
        sess.run(model.init)
        sess.run(model.input.initializer, model.input.feed(0, 0))
        for _ in range(10):  # move the weights and the batch-norm moving averages away from their initial values
            sess.run(model.train_op)
        inference = model.inference
        before = sess.run(inference.reconstruction, {inference.images: images})
        os.makedirs(tmp_path / 'run' / 'models')
        model.saver.save(sess, f'{tmp_path}/run/models/model_3', write_meta_graph=False)
    sess, outputs, epoch = vae_inference.restore(config)
    with sess:
        after = vae_inference.reconstruct(sess, outputs, images)
    assert epoch == 3
    assert np.array_equal(before, after)
    assert not np.allclose(before, before.mean())  # a real reconstruction, not a constant image


@pytest.mark.slow  # trains for 7-11 s: the fast tier stays under 3 minutes
def test_same_seed_gives_the_same_first_epoch_loss(tmp_path, mnist):
    data = subset(mnist, 1280)
    first = vae.train(tiny_config(tmp_path / 'a', '--num_epoch', '1'), data)
    second = vae.train(tiny_config(tmp_path / 'b', '--num_epoch', '1'), data)
    other_seed = vae.train(tiny_config(tmp_path / 'c', '--num_epoch', '1', '--seed', '1'), data)
    assert first == second
    assert first != other_seed


def test_restoring_and_using_a_model_needs_only_the_model_part_of_vae_py():
    """vae_inference.py, fid.py, saved_model.py and two_stage.py use vae.py's model (above its training section),
    nothing of the trainer."""
    tree = ast.parse(open(os.path.join(ROOT, 'vae.py')).read())
    seam = next(number for number, line in enumerate(open(os.path.join(ROOT, 'vae.py')), 1)
                if line.startswith('# ----') and 'training graph' in line)
    trainer = set()
    for node in tree.body:
        if node.lineno > seam:
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
                [target.id for target in getattr(node, 'targets', []) if isinstance(target, ast.Name)]
            trainer.update(names)
    assert {'train', 'training_loop', 'build_training_graph', 'save_epoch', 'Role'} <= trainer
    for script in ('vae_inference.py', 'fid.py', 'saved_model.py', 'two_stage.py'):
        used = {node.attr for node in ast.walk(ast.parse(open(os.path.join(ROOT, script)).read()))
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == 'vae'}
        assert not used & trainer, (script, used & trainer)
