"""Bad input and faults, a family per test: the run folder, resuming, checkpoints, the disk, signals, the metrics.
Each refusal is exit status 1 and one line `error: ...` naming the problem, no traceback, and every file that was
there before is byte-identical afterwards."""
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import command_line
import datasets
import run_folder
import vae
import vae_inference
from conftest import BASE, ROOT, assert_refused, run_script, snapshot, subset, tiny_config
from process import UserError


def test_resuming_with_another_epoch_length_or_model_is_refused(trained):
    before = snapshot(trained)
    for flag, value, message in (('--batch_size', '128', 'was trained with batch_size=64'),
                                 ('--num_train_images', '1280', 'was trained with num_train_images=640'),
                                 ('--kl_weight', '0.5', 'was trained with kl_weight=0.0005'),
                                 ('--test_seed', '3', 'was trained with test_seed=0')):
        result = run_script('vae.py', *BASE, '--run_directory', trained, '--num_epoch', '4', flag, value)
        assert_refused(result, message, trained, before)
    # A finished run keeps the config it was trained with: values that were never used are not written into it.
    result = run_script('vae.py', *BASE, '--run_directory', trained, '--learning_rate', '0.1')
    assert result.returncode == 0 and 'has trained all 2 epochs' in result.stdout
    assert snapshot(trained) == before
    # Inference refuses another kl_weight too (it sets the Gaussian decoder's variance): no metrics under it.
    result = run_script('vae_inference.py', *BASE, '--run_directory', trained, '--evaluate', '--kl_weight', '0.05')
    assert_refused(result, 'was trained with kl_weight=0.0005', trained, before)


def test_a_second_training_process_on_a_run_folder_is_refused(trained):
    with open(trained / '.lock', 'a+') as lock:  # hold the folder as a running vae.py does
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.seek(0)
        lock.truncate()
        lock.write(f'{os.getpid()}\n')
        lock.flush()
        before = snapshot(trained)
        result = run_script('vae.py', *BASE, '--run_directory', trained, '--num_epoch', '3')
        assert_refused(result, f'is being trained by another process (PID {os.getpid()})', trained, before)
        assert 'changing' not in result.stdout, result.stdout  # a refused command changes nothing
    result = run_script('vae.py', *BASE, '--run_directory', trained, '--num_epoch', '3')  # released: it resumes
    assert result.returncode == 0 and 'resuming' in result.stdout, result.stderr
    assert 'changing num_epoch 2 -> 3 from epoch 2' in result.stdout


def test_a_run_trained_while_a_command_starts_is_never_taken_over(tmp_path, monkeypatch):
    # A second vae.py resolves its configuration from an empty folder; before it holds the folder, another process
    # trains there. It must not resume that run with its own settings (and record no change): it is refused.
    run = tmp_path / 'run'
    make_folders = run_folder.make_run_folders

    def meanwhile(config):  # between this command's resolution and its lock
        monkeypatch.setattr(run_folder, 'make_run_folders', make_folders)
        assert run_script('vae.py', *BASE, '--num_epoch', '1', '--run_directory', run).returncode == 0
        meanwhile.before = snapshot(run)
        make_folders(config)
    monkeypatch.setattr(run_folder, 'make_run_folders', meanwhile)
    result = run_script('vae.py', *BASE, '--run_directory', run, '--learning_rate', '0.002', '--seed', '7')
    assert_refused(result, f'{run} changed while this command started', run, meanwhile.before)


def test_fresh_claims_its_new_folder_once_every_value_is_checked(trained):
    assert_refused(run_script('vae.py', *BASE, '--run_directory', trained, '--fresh', '--learning_rate', '-1'),
                   'learning_rate must be positive')
    assert not os.path.exists(f'{trained}-2')  # a refused command claims nothing
    os.mkdir(f'{trained}-2')  # claimed a moment ago by a --fresh started beside this one: empty, for now
    result = run_script('vae.py', *BASE, '--run_directory', trained, '--fresh', '--num_epoch', '1')
    assert result.returncode == 0 and f'training in {trained}-3' in result.stdout, result.stdout + result.stderr
    assert os.listdir(f'{trained}-2') == []
    # A folder holding another run's config.json and no checkpoint: refused, saying --fresh, which then works.
    other = trained.parent / 'other'
    other.mkdir()
    (other / 'config.json').write_text((trained / 'config.json').read_text().replace('"z_dim": 4', '"z_dim": 8'))
    assert_refused(run_script('vae.py', *BASE, '--run_directory', other), 'pass --fresh for a new run folder')
    result = run_script('vae.py', *BASE, '--run_directory', other, '--fresh', '--num_epoch', '1')
    assert result.returncode == 0 and f'training in {other}-2' in result.stdout, result.stdout + result.stderr


@pytest.mark.slow  # trains or fits: the fast tier stays under 3 minutes
def test_a_runs_files_stay_in_its_folder_and_are_found_where_its_config_json_says(tmp_path):
    # A checkpoint folder outside the run (absolute or ..) escaped the lock and --export wrote over the run's own
    # model_1; refused for every subfolder key. One inside it, recorded in config.json, is found without the flag.
    run = tmp_path / 'run'
    for key in ('--model_directory', '--log_directory', '--gen_directory'):
        for value in (str(tmp_path / 'elsewhere'), '../elsewhere', 'a/../../elsewhere', '.'):
            assert_refused(run_script('vae.py', *BASE, '--run_directory', run, key, value),
                           f'{key[2:]} must be a folder inside the run folder (a relative path without ..)')
    assert not os.path.exists(run) and not os.path.exists(tmp_path / 'elsewhere')
    assert run_script('vae.py', *BASE, '--run_directory', run, '--num_epoch', '1', '--model_directory',
                      'ckpts').returncode == 0
    result = run_script('vae.py', *BASE, '--run_directory', run, '--num_epoch', '2')
    assert result.returncode == 0 and f'resuming {run} from {run}/ckpts/model_0' in result.stdout, result.stdout
    result = run_script('vae_inference.py', '--run_directory', run, '--num_test', '10')
    assert result.returncode == 0 and f'restored {run}/ckpts/model_1' in result.stdout, result.stderr
    before = snapshot(run)
    assert_refused(run_script('vae.py', *BASE, '--run_directory', run, '--model_directory', 'other'),
                   'was trained with model_directory=ckpts but --model_directory says other', run, before)


def test_a_lock_file_or_config_json_that_is_not_the_runs_is_never_written(trained, tmp_path):
    # .lock as a folder was a traceback, as a link it truncated the file it pointed to; another program's
    # config.json in an empty folder was merged into and rewritten.
    victim = tmp_path / 'victim.txt'
    victim.write_text('keep me\n')
    os.remove(trained / '.lock') if os.path.lexists(trained / '.lock') else None
    for make in (lambda: os.mkdir(trained / '.lock'), lambda: os.symlink(victim, trained / '.lock')):
        make()
        before = snapshot(trained)
        assert_refused(run_script('vae.py', *BASE, '--run_directory', trained, '--num_epoch', '3'),
                       "the run folder's lock file, cannot be used", trained, before)
        (os.rmdir if os.path.isdir(trained / '.lock') and not os.path.islink(trained / '.lock') else os.remove)(
            trained / '.lock')
    assert victim.read_text() == 'keep me\n'
    foreign = tmp_path / 'app'
    foreign.mkdir()
    (foreign / 'config.json').write_text('{"project": "my web app", "port": 8080}')
    before = snapshot(foreign)
    assert_refused(run_script('vae.py', *BASE, '--run_directory', foreign),
                   "config.json is not a run's config.json (it has no dataset or z_dim)", foreign, before)
    (foreign / 'config.json').write_text('{"dataset": "MNIST", "z_dim": 4, "seed": "not-an-int"}')
    before = snapshot(foreign)
    assert_refused(run_script('vae.py', *BASE, '--run_directory', foreign),
                   "seed must be an integer, got 'not-an-int' in", foreign, before)


def test_a_checkpoint_named_with_leading_zeros_is_not_a_checkpoint(trained):
    # model_01 beside model_1: one epoch number for two files, and model_01's numbers were kept under model_1's
    # digest. Only model_<number> without leading zeros is a checkpoint.
    for path in (trained / 'models').glob('model_1.*'):
        os.rename(path, str(path).replace('model_1.', 'model_01.'))
    assert run_folder.list_checkpoints(trained / 'models') == {0: str(trained / 'models' / 'model_0')}


def test_a_model_too_large_for_memory_is_refused_before_anything_is_written(tmp_path):
    # --z_dim 100000000 was a MemoryError traceback (and a process that would not exit), --kernel_size 3000 an
    # InvalidArgumentError that left .lock and logs/ behind: the weights are counted from the config first.
    run = tmp_path / 'run'
    for flag, value in (('--z_dim', '100000000'), ('--kernel_size', '3000')):
        assert_refused(run_script('vae.py', *BASE, '--run_directory', run, flag, value),
                       'the model would have')
    assert not os.path.exists(run)


def test_a_record_or_picture_that_cannot_be_written_says_what_is_in_the_way(trained):
    # A file named evaluations, or a folder where the record goes: the evaluation ran whole, then failed saying
    # "free some space". Now refused before any work, naming what to move; a picture's folder likewise.
    shutil.rmtree(trained / 'evaluations', ignore_errors=True)
    (trained / 'evaluations').write_text('mine')
    before = snapshot(trained)
    result = run_script('vae_inference.py', '--run_directory', trained, '--evaluate', '--k', '2', '--num_test', '5')
    assert_refused(result, f'{trained}/evaluations is in the way of the record', trained, before)
    assert 'IWAE' not in result.stdout
    os.remove(trained / 'evaluations')
    os.mkdir(trained / 'reconstructions_model_1.png')
    before = snapshot(trained)
    assert_refused(run_script('vae_inference.py', '--run_directory', trained),
                   f'{trained}/reconstructions_model_1.png is a folder where a picture goes; move it away', trained,
                   before)
    (trained.parent / 'afile').write_text('mine')  # an export's folder under a file: "free some space" before
    result = run_script('vae_inference.py', '--run_directory', trained, '--export', trained.parent / 'afile' / 'x')
    assert_refused(result, f'{trained.parent}/afile is a file where a folder goes: move it away', trained, before)


@pytest.mark.slow  # trains or fits: the fast tier stays under 3 minutes
def test_a_run_left_with_an_interrupted_checkpoint_alone_is_told_a_fix_that_works(trained):
    # Every model_* gone, interrupted_20 (the end of the last epoch) left: the advice was to run vae.py, which
    # said the run had trained all its epochs and wrote nothing, and the advice came again.
    for path in (trained / 'models').glob('model_0.*'):
        os.remove(path)
    for path in (trained / 'models').glob('model_1.*'):
        os.rename(path, str(path).replace('model_1.', 'interrupted_20.'))
    result = run_script('vae_inference.py', '--run_directory', trained)
    assert_refused(result, f'(only interrupted_20); run python vae.py --run_directory {trained} to finish its epoch, '
                           'with --num_epoch one more than the run has trained if it says the run has trained them all')
    assert 'has trained all 2 epochs' in run_script('vae.py', *BASE, '--run_directory', trained).stdout
    assert run_script('vae.py', *BASE, '--run_directory', trained, '--num_epoch', '3').returncode == 0
    result = run_script('vae_inference.py', '--run_directory', trained)
    assert result.returncode == 0 and f'restored {trained}/models/model_2' in result.stdout, result.stderr


def test_a_damaged_config_json_is_a_one_line_error(trained):
    for text in ('', '{"z_dim": 4', '[1, 2]'):
        (trained / 'config.json').write_text(text)
        before = snapshot(trained)
        assert_refused(run_script('vae.py', *BASE, '--run_directory', trained, '--num_epoch', '3'),
                       'config.json is not a readable config', trained, before)
        assert_refused(run_script('vae_inference.py', *BASE, '--run_directory', trained),
                       'config.json is not a readable config', trained, before)


def test_unreadable_checkpoints_never_let_another_model_train_over_them(trained):
    for index in (trained / 'models').glob('*.index'):
        index.write_bytes(b'')
    before = snapshot(trained)
    assert_refused(run_script('vae.py', *BASE, '--run_directory', trained, '--z_dim', '8'),
                   'was trained with z_dim=4', trained, before)
    assert_refused(run_script('vae.py', *BASE, '--run_directory', trained, '--num_epoch', '3'),
                   'holds checkpoints but none reads back', trained, before)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(trained):
    data_file = trained / 'models' / 'model_1.data-00000-of-00001'
    data_file.write_bytes(data_file.read_bytes()[:1000])
    before = snapshot(trained)
    assert_refused(run_script('vae_inference.py', *BASE, '--run_directory', trained),
                   'model_1 cannot be read', trained, before)
    assert 'pass --checkpoint 0' in run_script('vae_inference.py', *BASE, '--run_directory', trained).stderr
    result = run_script('vae.py', *BASE, '--run_directory', trained, '--num_epoch', '3')
    assert result.returncode == 0, result.stderr
    assert 'warning: skipping unreadable checkpoint' in result.stdout and 'model_1' in result.stdout
    assert 'model_0 (step 10)' in result.stdout  # resumed from the previous checkpoint
    assert int(tf.train.load_variable(str(trained / 'models' / 'model_2'), 'global_step')) == 30
    assert (trained / 'models' / 'model_1-unreadable.index').exists()  # the damaged one, kept aside, not lost


def test_an_existing_folder_that_cannot_be_written_is_refused_before_training(tmp_path):
    # /sys is read-only to every user, root included: the folder exists, and the first save would fail.
    assert os.path.isdir('/sys') and not os.access('/sys', os.W_OK) or os.geteuid() == 0
    result = run_script('vae.py', *BASE, '--run_directory', '/sys/kernel', '--model_directory', 'mm')
    assert_refused(result, 'cannot write in /sys/kernel/mm')


def run_with_file_size_limit(limit, script, *args):
    """run_process with every file this process writes cut at `limit` bytes (RLIMIT_FSIZE; Python ignores
    SIGXFSZ, so a write past it fails with EFBIG as a full disk fails with ENOSPC)."""
    limited = ('import resource, runpy, sys\n'
               f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n'
               'sys.argv = sys.argv[1:]\n'
               'runpy.run_path(sys.argv[0], run_name="__main__")\n')
    return subprocess.run([sys.executable, '-c', limited, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.process  # a file size limit on a process of its own
def test_a_full_disk_leaves_every_earlier_file_as_it_was(trained):
    assert run_script('vae_inference.py', *BASE, '--run_directory', trained).returncode == 0
    assert run_script('vae_inference.py', *BASE, '--run_directory', trained, '--evaluate', '--k', '5',
                      '--num_test', '20').returncode == 0
    before = snapshot(trained)
    for args, written in ((['--evaluate', '--k', '6', '--num_test', '20'], 'evaluations'),
                          (['--scatter', '--checkpoint', '1'], 'latent_scatter_model_1.png'),
                          (['--curves'], 'training_curves.png'),
                          ([], 'reconstructions_model_1.png')):  # the pictures a first command wrote
        if args == ['--curves']:
            assert run_script('vae_inference.py', *BASE, '--run_directory', trained, *args).returncode == 0
            before = snapshot(trained)
        result = run_with_file_size_limit(100, 'vae_inference.py', *BASE, '--run_directory', trained, *args)
        assert_refused(result, '(File too large); free some space', trained, before)
        assert written in result.stderr


def test_a_checkpoint_that_cannot_be_written_stops_with_one_line(tmp_path, mnist, monkeypatch):
    def full_disk(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, (  # as a graph's error reads: the cause before [[node]]
            "Graph execution error:\n\nDetected at node 'save/SaveV2' defined at (most recent call last):\n"
            '    File "vae.py", line 538, in save_checkpoint\nNode: \'save/SaveV2\'\n'
            'model_0.data-00000-of-00001; No space left on device\n\t [[{{node save/SaveV2}}]]'))
    monkeypatch.setattr(tf.compat.v1.train.Saver, 'save', full_disk)
    with pytest.raises(UserError, match=r'cannot write checkpoint .*model_0 \(model_0.data-00000-of-00001; '
                                        r'No space left on device\); free some space'):
        vae.train(tiny_config(tmp_path / 'run', '--num_epoch', '1'), subset(mnist, 640))


@pytest.mark.process  # SIGINT to a process that is loading TensorFlow
def test_ctrl_c_while_the_script_starts_leaves_no_traceback(tmp_path):
    # A user's Ctrl-C finds SIGINT's default action. A suite started in the background (bash's '&') ignores
    # SIGINT, and exec keeps an ignored signal ignored but resets a handled one: handle it while the child starts
    # (preexec_fn would do it in the child, but is unsafe beside TensorFlow's threads).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'vae.py'), *BASE, '--run_directory',
                                    str(tmp_path / 'run')], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    # Synchronised on the child: once TensorFlow's library is mapped, the script has passed the line that gives
    # SIGINT its default action, and is loading TensorFlow (seconds; the whole start-up takes longer).
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        with open(f'/proc/{process.pid}/maps') as maps:
            if 'libtensorflow' in maps.read():
                break
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (-signal.SIGINT, 130) and 'Traceback' not in stderr, stderr
    assert not os.path.exists(tmp_path / 'run' / 'models' / 'model_0.index')


def test_non_finite_metrics_are_not_written(tmp_path):
    os.makedirs(tmp_path, exist_ok=True)
    path = str(tmp_path / 'evaluations' / 'record.json')
    with pytest.raises(UserError, match='the metrics negative_elbo_nats are not finite'):
        vae_inference.write_record(path, {'test_images': 10, 'decoder': 'gaussian', 'reconstruction_mse': 0.1,
                                             'psnr_db': 10.0, 'kl_nats': 1.0, 'negative_elbo_nats': float('nan'),
                                             'negative_elbo_bits_per_dim': 1.0, 'iwae_k': 5,
                                             'negative_iwae_nats': 1.0, 'negative_iwae_nats_standard_error': 0.1,
                                             'negative_iwae_bits_per_dim': 1.0, 'active_units': 1, 'z_dim': 4})
    assert not os.path.exists(tmp_path / 'evaluations')


def test_the_test_binarisation_depends_on_test_seed_alone(mnist):
    images = mnist['test_images'][:200]
    config, _ = command_line.parse_command_line(['--dataset', 'MNIST_bernoulli'])
    first = datasets.evaluation_images(config, images)
    assert np.array_equal(first, datasets.evaluation_images({**config, 'seed': 7}, images))
    assert not np.array_equal(first, datasets.evaluation_images({**config, 'test_seed': 7}, images))


@pytest.mark.parametrize('script, args, message', [
    ('vae.py', ['--learning_rate', '-1'], 'learning_rate must be positive and finite'),       # config
    ('vae.py', ['--seed', '-1'], 'seed must be in [0, 2**32)'),
    ('vae.py', ['--data_directory', os.path.join(ROOT, 'README.md')], 'is a file, not a folder'),  # data
    ('vae.py', ['--z_dim', '8'], 'was trained with z_dim=4'),                                   # checkpoint
    ('vae_inference.py', ['--checkpoint', '-5'], '--checkpoint -5 is no checkpoint'),             # inference flags
    ('vae_inference.py', ['--checkpoint', '9'], 'no checkpoint model_9'),
    ('vae_inference.py', ['--interpolate', '--num_test', '1'], 'pass --num_test 2 or more'),
    ('vae_inference.py', ['--manifold'], '--manifold needs a model with z_dim 2'),
    ('vae_inference.py', ['--fid', '--fid_samples', '30000000'], '--fid_samples must be in 2..100,000'),
    ('vae_inference.py', ['--num_test', '-1'], '--num_test must be 0 (all) or positive, got -1'),  # named --k
    ('vae_inference.py', ['--fid', '--num_test', '1'], '--num_test must be 0 (all) or 2 or more with --fid'),
    ('vae_inference.py', ['--k', '0'], '--k must be in 1..10,000,000 (the literature protocol: 5000), got 0'),
])
def test_bad_input_on_a_trained_run_changes_nothing(trained, script, args, message):
    before = snapshot(trained)
    assert_refused(run_script(script, *BASE, '--run_directory', trained, *args), message, trained, before)


def test_an_error_naming_a_folder_with_a_newline_is_still_one_line(tmp_path):
    run = tmp_path / 'two\nlines'
    run.mkdir()
    result = run_script('vae_inference.py', *BASE, '--run_directory', run)
    assert_refused(result, 'two\\nlines')


def test_a_folder_where_a_picture_goes_is_refused_before_any_picture_is_drawn(trained):
    for blocked, flags in (('generations_model_1.png', []), ('generations.gif', []),
                           ('interpolation_model_1-n10.png', ['--interpolate', '--num_test', '10'])):
        (trained / blocked).mkdir()
        before = snapshot(trained)
        result = run_script('vae_inference.py', '--run_directory', trained, *flags)
        assert_refused(result, f'{trained / blocked} is a folder where a picture goes', trained, before)
        assert 'wrote' not in result.stdout, result.stdout  # the reconstructions neither
        (trained / blocked).rmdir()
