"""Mixed precision: bfloat16 training through TensorFlow's oneDNN rewrite, float32 checkpoints and metrics, the
hardware line, and float16 refused without a GPU."""
import numpy as np
import pytest
import tensorflow as tf

import command_line
import deploy
import vae
import vae_inference
from conftest import MNIST_DIR, TINY, run_script, subset, tiny_config


@pytest.mark.slow
def test_bfloat16_trains_like_float32_and_its_checkpoint_restores_in_float32(tmp_path, mnist):
    data = subset(mnist, 6400)  # 3 epochs of 100 steps
    losses = {precision: vae.train(tiny_config(tmp_path / precision, '--num_epoch', '3', '--precision', precision),
                                   data) for precision in ('float32', 'mixed_bfloat16')}
    assert losses['mixed_bfloat16'][2] < 0.8 * losses['mixed_bfloat16'][0]  # it learns
    # Same seed and data: bfloat16's 8-bit mantissa moves the losses a little, not the learning.
    assert abs(losses['mixed_bfloat16'][2] - losses['float32'][2]) < 0.03 * losses['float32'][2], losses
    variables = {precision: {name: (tuple(shape), tf.train.load_checkpoint(str(tmp_path / precision / 'models' /
                                                                                 'model_2')).get_tensor(name).dtype)
                             for name, shape in tf.train.list_variables(str(tmp_path / precision / 'models' /
                                                                            'model_2'))}
                 for precision in losses}
    assert variables['mixed_bfloat16'] == variables['float32']  # names, shapes and dtypes: a float32 checkpoint
    assert all(dtype != np.dtype('bfloat16') for _, dtype in variables['float32'].values())
    sess, outputs, epoch = vae_inference.restore(tiny_config(tmp_path / 'mixed_bfloat16', '--precision',
                                                             'mixed_bfloat16'))
    with sess:
        reconstructions = vae_inference.reconstruct(sess, outputs, mnist['test_images'][:10])
    assert epoch == 2 and reconstructions.dtype == np.float32 and np.isfinite(reconstructions).all()


def test_the_precision_and_the_hardware_are_named_at_start_up(tmp_path):
    result = run_script('vae.py', *TINY, '--num_train_images', '640', '--num_epoch', '1', '--run_directory',
                        tmp_path / 'run', '--precision', 'mixed_bfloat16')
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith('precision mixed_bfloat16 (oneDNN bfloat16 rewrite of the CPU ops): ')
    flags = deploy.cpu_flags()
    if 'amx_bf16' in flags or 'avx512_bf16' in flags:
        assert 'this CPU has' in first and 'slower' not in first
    else:
        assert 'it will likely be slower than float32' in first


@pytest.mark.skipif(bool(tf.config.list_physical_devices('GPU')), reason='a GPU is visible')
def test_float16_without_a_gpu_is_a_one_line_error(tmp_path):
    result = run_script('vae.py', *TINY, '--run_directory', tmp_path / 'run', '--precision', 'mixed_float16')
    assert result.returncode == 1
    assert result.stderr.strip() == ('error: precision mixed_float16 needs a CUDA GPU and none is visible; pass '
                                     '--precision mixed_bfloat16 (CPUs with AMX or AVX512-BF16) or float32')
    assert not (tmp_path / 'run').exists()


def test_only_a_training_session_gets_the_rewrite():
    config, _ = command_line.parse_command_line(['--data_directory', MNIST_DIR, '--precision', 'mixed_bfloat16'])
    on = deploy.session_config(config, training=True).graph_options.rewrite_options
    off = deploy.session_config(config).graph_options.rewrite_options
    assert on.auto_mixed_precision_onednn_bfloat16 == 1 and off.auto_mixed_precision_onednn_bfloat16 == 0
