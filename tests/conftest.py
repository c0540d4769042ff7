"""What every test file shares: where MNIST is, the one table of tiny settings, the scripts run in this process (or
as processes, where the process boundary is what a test checks), and the tiny runs trained once a session.

Tiers (pytest.ini): `-m "not slow"` is the fast tier, every mechanism at least once; `-m process` selects the tests
that start real processes (signals, SIGKILL, resource limits, an edited config.py, clusters, the quick start as
typed, a plain-TensorFlow child, a live TensorBoard)."""
import contextlib
import importlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Real MNIST: the shared copy beside the repo when there is one, else the project's folder (downloaded once).
MNIST_DIR = os.path.join(ROOT, '..', 'shared', 'data', 'mnist')
if not os.path.isdir(MNIST_DIR):
    MNIST_DIR = os.path.join(ROOT, 'MNIST', 'data')

# ---------------------------------------------------------------- the one table of tiny settings

# A small model that still has the original's layer structure: trains a few hundred steps in seconds.
TINY = ['--data_directory', MNIST_DIR, '--z_dim', '4', '--encoder_filters', '4,8,8', '--decoder_filters', '8,4,1',
        '--batch_size', '64', '--num_epoch', '2', '--save_every', '1', '--summary_every', '10']
# The CelebA layer structure (5x5 kernels, strides 2,2,2,1, conv + tanh head) at reduced widths, on 40 made-up faces.
TINY_CELEBA = ['--dataset', 'celebA', '--encoder_filters', '8,8,8,8', '--decoder_filters', '8,8,8,3', '--z_dim', '8',
               '--batch_size', '8', '--num_epoch', '2', '--save_every', '1', '--num_test_images', '10',
               '--summary_every', '2']

# The tiny runs: {name: flags}. Each is trained once a session (pristine_runs) and tests work on copies (tiny_run).
RUNS = {
    # the Gaussian decoder of config.py's MNIST: 640 images, 10 steps an epoch, model_0 and model_1
    'gaussian': TINY + ['--num_train_images', '640'],
    # the MNIST_bernoulli preset: epoch 0 the ELBO, epoch 1 the IWAE bound of 2 samples, 10 steps an epoch
    'bernoulli': ['--dataset', 'MNIST_bernoulli', '--data_directory', MNIST_DIR, '--z_dim', '4', '--encoder_filters',
                  '4,8,8', '--decoder_filters', '8,4,1', '--num_train_images', '640', '--batch_size', '64',
                  '--summary_every', '10', '--save_every', '1', '--num_epoch', '2', '--iwae_start_epoch', '1',
                  '--train_samples', '2'],
    # a 2-D latent for the manifold and the scatter: 10,000 images, 20 steps an epoch, model_0 and model_1
    'z_dim_2': TINY + ['--z_dim', '2', '--batch_size', '500', '--num_train_images', '10000'],
    # the CelebA pipeline on the made-up faces of the session's celeba_folder, model_0 and model_1
    'celebA': TINY_CELEBA,
}
# What each tiny run was trained with, for tests that run vae.py or vae_inference.py on it with the same flags.
BASE = RUNS['gaussian']
BERNOULLI = RUNS['bernoulli']


def tiny_config(run_directory, *extra):
    """The resolved config of TINY in run_directory (nothing trained or read)."""
    import command_line
    config, _ = command_line.parse_command_line(TINY + ['--run_directory', str(run_directory), *extra])
    return config


def celeba_config(folder, *extra):
    """The resolved config of TINY_CELEBA on the faces in folder."""
    import command_line
    config, _ = command_line.parse_command_line([*TINY_CELEBA, '--data_directory', str(folder), *extra])
    return config


@pytest.fixture(scope='session', autouse=True)
def mnist_read_once():
    """The real MNIST files are read and checksummed once a session: every later datasets.load_mnist of MNIST_DIR
    (the in-process scripts' included) gets the same arrays, read-only, so a script that wrote into them would
    fail. Other folders (test_data.py's damaged copies) are read as they are."""
    import datasets
    read, kept = datasets.load_mnist, {}

    def load_mnist(folder, *args, **kwargs):
        if os.path.realpath(folder) != os.path.realpath(MNIST_DIR):
            return read(folder, *args, **kwargs)
        if not kept:
            kept.update(read(folder, *args, **kwargs))
            for array in kept.values():
                array.flags.writeable = False
        return dict(kept)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets, 'load_mnist', load_mnist)
        yield


@pytest.fixture(scope='session')
def mnist():
    import datasets
    return datasets.load_mnist(MNIST_DIR)


def subset(mnist, train, test=100):
    """The first `train` training and `test` test images, for runs of a few steps."""
    return {'train': mnist['train_images'][:train], 'test_images': mnist['test_images'][:test],
            'grid_images': mnist['test_images'][:25]}


# ---------------------------------------------------------------- the scripts, run in this process

def run_script(script, *args):
    """`python SCRIPT ARGS` from the repository root, run in this process: the script's main(argv) under
    process.exit_on_user_error, in a graph of its own, with stdout and stderr captured (TensorFlow's logger and
    Python's warnings too, under a new process's warning filters) and a SystemExit as the return code. What it
    changes of the process (SIGINT's handler, TensorFlow's op determinism) is put back. Returns a
    CompletedProcess; an exception that is not the user's (a traceback) is raised in the test."""
    import process
    from tensorflow.python.framework import config as tf_config
    module = importlib.import_module(os.path.splitext(script)[0])
    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, code = sys.argv, os.getcwd(), 0
    saved_sigint, deterministic = signal.getsignal(signal.SIGINT), tf_config.is_op_determinism_enabled()
    logger, handler = logging.getLogger('tensorflow'), logging.StreamHandler(stderr)
    handler.setFormatter(logging.Formatter('%(levelname)s:%(name)s:%(message)s'))
    saved_propagate = logger.propagate
    sys.argv = [os.path.join(ROOT, script), *argv]  # argparse names the script from it
    os.chdir(ROOT)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings(), \
                process.tf.Graph().as_default():
            warnings.resetwarnings()  # a new process's filters: DeprecationWarning and the like shown in __main__ only
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter('ignore', category)
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
                stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
            try:
                process.exit_on_user_error(lambda: module.main(argv))
            except SystemExit as exit:
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
                code = 1 if isinstance(exit.code, str) else exit.code or 0
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        signal.signal(signal.SIGINT, saved_sigint)
        if not deterministic:
            tf_config.disable_op_determinism()
        logger.removeHandler(handler)
        logger.propagate = saved_propagate
    return subprocess.CompletedProcess([script, *argv], code, stdout.getvalue(), stderr.getvalue())


# ---------------------------------------------------------------- tiny runs, trained once a session

def face_like_jpeg(path, rng, size=(178, 218), mode='RGB', quality=92):
    """A 178x218 JPEG with gradients, shapes, hard edges and noise: content a crop mistake would show in."""
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    colour = rng.uniform(0, 1, 3)
    pixels = np.stack([255 * (colour[c] * x + (1 - colour[c]) * y) for c in range(3)], axis=-1)
    image = Image.fromarray(np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        box = (x0, y0, x0 + rng.integers(10, 60), y0 + rng.integers(10, 60))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.uniform() < 0.5 else draw.rectangle)(box, fill=fill)
    draw.rectangle((60, 80, 120, 90), fill=(255, 255, 255))
    draw.rectangle((60, 120, 120, 130), fill=(0, 0, 0))
    image.convert(mode).save(path, quality=quality)


def make_celeba(folder, count=40, partition=(30, 5, 5)):
    """count JPEGs 000001.jpg... and a list_eval_partition.txt with train / validation / test counts."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f'{i:06d}.jpg' for i in range(1, count + 1)]
    for name in names:
        face_like_jpeg(os.path.join(folder, name), rng)
    if partition:
        codes = ['0'] * partition[0] + ['1'] * partition[1] + ['2'] * partition[2]
        with open(os.path.join(folder, 'list_eval_partition.txt'), 'w') as f:
            f.writelines(f'{name} {code}\n' for name, code in zip(names, codes))
    return names



@pytest.fixture(scope='session')
def celeba_folder(tmp_path_factory):
    """40 made-up faces shaped like img_align_celeba (30 train, 5 validation, 5 test), with a partition file."""
    folder = tmp_path_factory.mktemp('celeba') / 'img_align_celeba'
    make_celeba(folder)
    return folder


@pytest.fixture(scope='session')
def pristine_runs(tmp_path_factory, celeba_folder):
    """pristine_runs(name): the run folder of RUNS[name], trained by vae.py the first time a test asks for it.
    Never changed: tests that change a run take a copy (tiny_run)."""
    folder, trained = tmp_path_factory.mktemp('runs'), {}

    def pristine(name):
        if name not in trained:
            data = ['--data_directory', celeba_folder] if name == 'celebA' else []
            result = run_script('vae.py', *RUNS[name], *data, '--run_directory', folder / name)
            assert result.returncode == 0, result.stdout + result.stderr
            trained[name] = (folder / name, result.stdout)
        return trained[name][0]
    pristine.output = lambda name: trained[name][1]  # what training printed
    return pristine


@pytest.fixture
def tiny_run(pristine_runs, tmp_path_factory):
    """tiny_run(name): a copy of the tiny run RUNS[name], the test's own to change, in a folder beside tmp_path
    (tests list what they write in tmp_path)."""
    def copy(name):
        target = tmp_path_factory.mktemp(name) / 'run'
        shutil.copytree(pristine_runs(name), target, symlinks=True)
        return target
    return copy


@pytest.fixture
def trained(tiny_run):
    """A copy of the tiny Gaussian run: model_0 and model_1, trained by vae.py as a user would."""
    return tiny_run('gaussian')


# ---------------------------------------------------------------- what tests check of a run folder

def evaluation_record(run_directory):
    """The one evaluation record vae_inference.py --evaluate kept in a run folder."""
    import vae_inference
    records = list(vae_inference.evaluation_records(run_directory).values())
    assert len(records) == 1, records
    return records[0]


def keys_only(config):
    """A resolved config without what it records beside the keys (the preset, the steps an epoch, the changes)."""
    import config_keys
    return {key: value for key, value in config.items() if key not in config_keys.RECORD_KEYS}


def snapshot(folder):
    """{relative path: bytes} of every file under folder but .lock (the PID of the newest training process)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in set(names) - {'.lock'}:
            path = os.path.join(root, name)
            assert not os.path.islink(path), path  # (a link to /dev/full would read forever)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def assert_refused(result, message, folder=None, before=None):
    """Exit status 1, one line `error: ...` holding message, no traceback; folder byte-identical to before."""
    stderr = result.stderr.strip()
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith('error: ') and 'Traceback' not in stderr, stderr
    assert message in stderr, stderr
    if folder is not None:
        assert snapshot(folder) == before
