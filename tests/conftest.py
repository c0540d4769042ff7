import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Real MNIST: the shared copy beside the repo when there is one, else the project's folder (downloaded once).
MNIST_DIR = os.path.join(ROOT, '..', 'shared', 'data', 'mnist')
if not os.path.isdir(MNIST_DIR):
    MNIST_DIR = os.path.join(ROOT, 'MNIST', 'data')

# A small model that still has the original's layer structure: trains a few hundred steps in seconds.
TINY = ['--data_directory', MNIST_DIR, '--z_dim', '4', '--encoder_filters', '4,8,8', '--decoder_filters', '8,4,1',
        '--batch_size', '64', '--num_epoch', '2', '--save_every', '1', '--summary_every', '10']


def tiny_config(run_directory, *extra):
    import utils
    config, _ = utils.parse_command_line(TINY + ['--run_directory', str(run_directory), *extra])
    return config


@pytest.fixture(scope='session')
def mnist():
    import datasets
    return datasets.load_mnist(MNIST_DIR)


def subset(mnist, train, test=100):
    """The first `train` training and `test` test images, for runs of a few steps."""
    return {'train': mnist['train_images'][:train], 'test_images': mnist['test_images'][:test],
            'grid_images': mnist['test_images'][:25]}


def run_script(script, *args):
    """Run vae.py or vae_inference.py from the repo root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def evaluation_record(run_directory):
    """The one evaluation record vae_inference.py --evaluate kept in a run folder."""
    import vae_inference
    records = list(vae_inference.evaluation_records(run_directory).values())
    assert len(records) == 1, records
    return records[0]


def config_keys(config):
    """A resolved config without what it records beside the keys (the preset, the steps an epoch, the changes)."""
    import utils
    return {key: value for key, value in config.items() if key not in utils.RECORD_KEYS}
