"""The README's quick start as a user types it, in a fresh copy of the repository: `python vae.py --num_epoch 1`,
then `python vae_inference.py`, on MNIST and on CelebA (made-up JPEGs in the folder the README names)."""
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from conftest import MNIST_DIR, ROOT, make_celeba


def fresh_copy(tmp_path):
    """The repository's code as a clone has it, without run folders or data."""
    copy = tmp_path / 'vae'
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns('.git', '.venv', '.cache', 'MNIST', 'celebA',
                                                              '__pycache__', '.pytest_cache'))
    return copy


def typed(copy, command):
    """A command line of the README, run in the copy with this interpreter as `python`."""
    words = command.split()
    assert words[0] == 'python'
    return subprocess.run([sys.executable, *words[1:]], cwd=copy, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.process
def test_the_mnist_quick_start(tmp_path):
    copy = fresh_copy(tmp_path)
    os.makedirs(copy / 'MNIST')
    os.symlink(os.path.abspath(MNIST_DIR), copy / 'MNIST' / 'data')  # the files the loader would download
    result = typed(copy, 'python vae.py --num_epoch 1')
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'saved model_0' in result.stdout and 'Traceback' not in result.stderr
    result = typed(copy, 'python vae_inference.py')
    assert result.returncode == 0, result.stdout + result.stderr
    with Image.open(copy / 'MNIST' / 'generations.gif') as gif:
        assert gif.n_frames == 1  # one epoch, one frame: the case Pillow takes another path for
    assert (copy / 'MNIST' / 'reconstructions_model_0.png').exists()


@pytest.mark.slow
@pytest.mark.process
def test_the_celeba_quick_start(tmp_path):
    copy = fresh_copy(tmp_path)
    make_celeba(copy / 'celebA' / 'data' / 'img_align_celeba', count=150, partition=(130, 10, 10))
    result = typed(copy, 'python vae.py --dataset celebA --num_epoch 1')
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'saved model_0' in result.stdout
    result = typed(copy, 'python vae_inference.py --dataset celebA')
    assert result.returncode == 0, result.stdout + result.stderr
    with Image.open(copy / 'celebA' / 'generations.gif') as gif:
        assert gif.n_frames == 1
