"""The run folder as the record of its run: the configuration resolved once, resumes that go on as configured,
checkpoints and evaluations never replaced, all-or-nothing exports, one writer, and the checks of every input."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import command_line
import datasets
import pictures
import run_folder
import vae
import vae_inference
from conftest import (BASE, BERNOULLI, MNIST_DIR, ROOT, TINY_CELEBA, assert_refused, celeba_config, make_celeba,
                      run_script, snapshot, subset, tiny_config)
from process import UserError, write_atomically


# ---------------------------------------------------------------- the configuration, resolved once

@pytest.mark.slow  # trains for 7-11 s: the fast tier stays under 3 minutes
def test_a_resumed_preset_run_goes_on_as_configured_and_records_each_change(tiny_run):
    run = tiny_run('bernoulli')  # 2 epochs of the tiny MNIST_bernoulli preset
    saved = json.load(open(run / 'config.json'))
    assert (saved['preset'], saved['dataset'], saved['steps_per_epoch'], saved['changes']) == \
        ('MNIST_bernoulli', 'MNIST', 10, [])
    # Only the run folder and --num_epoch: the preset's objective, learning rate and schedule go on (config.py's
    # default dataset, MNIST, would train the ELBO at learning rate 0.0005).
    result = run_script('vae.py', '--run_directory', run, '--num_epoch', '3', '--learning_rate', '0.001')
    assert result.returncode == 0, result.stderr
    assert 'changing num_epoch 2 -> 3 from epoch 2' in result.stdout
    assert 'changing learning_rate 0.003 -> 0.001 from epoch 2' in result.stdout
    assert 'objective: the IWAE bound of 2 samples from epoch 1' in result.stdout
    saved = json.load(open(run / 'config.json'))
    assert (saved['objective'], saved['train_samples'], saved['learning_rate'], saved['kl_schedule']) == \
        ('iwae', 2, 0.001, 'linear')
    assert [(c['key'], c['from'], c['to'], c['epoch']) for c in saved['changes']] == \
        [('num_epoch', 2, 3, 2), ('learning_rate', 0.003, 0.001, 2)]
    # The same flags again change nothing more; the record stays.
    result = run_script('vae.py', '--run_directory', run, '--num_epoch', '3', '--learning_rate', '0.001')
    assert result.returncode == 0 and 'changing' not in result.stdout
    assert json.load(open(run / 'config.json'))['changes'] == saved['changes']


def test_the_epoch_length_comes_from_the_checkpoints_without_config_json(trained):
    os.remove(trained / 'config.json')
    before = snapshot(trained)
    for batch in ('32', '256'):
        result = run_script('vae.py', *BASE, '--run_directory', trained, '--num_epoch', '12', '--batch_size', batch)
        assert_refused(result, 'model_0 holds step 10, not the end of epoch 0', trained, before)
    # A checkpoint is never replaced, even if a run would reach its epoch again.
    config = tiny_config(trained, '--num_train_images', '640')
    with pytest.raises(UserError, match='model_1 exists already and is never replaced'):
        vae.save_checkpoint(None, None, config, 'model_1')


def test_a_foreign_checkpoint_is_refused_by_training_and_inference_alike(trained, tmp_path):
    other = tmp_path / 'other'
    assert run_script('vae.py', *BASE, '--batch_size', '128', '--run_directory', other).returncode == 0
    for name in os.listdir(other / 'models'):
        if name.startswith('model_1.'):
            shutil.copy(other / 'models' / name, trained / 'models' / name.replace('model_1', 'model_7'))
    before = snapshot(trained)
    for script in ('vae.py', 'vae_inference.py'):
        result = run_script(script, '--run_directory', trained, '--num_epoch', '9')
        assert_refused(result, 'model_7 holds step 10, not the end of epoch 7', trained, before)


def test_a_contradicting_flag_is_refused_before_any_data_is_read(tmp_path, tiny_run, celeba_folder):
    folder = tmp_path / 'img_align_celeba'
    shutil.copytree(celeba_folder, folder)
    run = tiny_run('celebA')
    args = [*TINY_CELEBA, '--data_directory', folder]
    (folder / '000001.jpg').write_bytes(b'not a jpeg')  # a training image the file check would refuse
    before = snapshot(run)
    result = run_script('vae.py', *args, '--run_directory', run, '--z_dim', '16')
    assert_refused(result, 'was trained with z_dim=8', run, before)


@pytest.mark.parametrize('edit, message', [
    pytest.param(("'z_dim': 16,", "'z_dim': 16.0,"), "z_dim must be an integer, got 16.0 in config.py",
                 marks=pytest.mark.slow),
    pytest.param(("'z_dim': 16,", "'z_dim': 'sixteen',"), "z_dim must be an integer, got 'sixteen' in config.py",
                 marks=pytest.mark.slow),
    pytest.param(("'iwae_start_epoch': 0, ", ''), 'preset MNIST lacks iwae_start_epoch', marks=pytest.mark.slow),
    (("'z_dim': 16,", "'z_dim': 16,,"), 'config.py does not load: SyntaxError (line'),
])
@pytest.mark.process  # an edited config.py, in a copy of the repository
def test_a_broken_config_py_is_one_line(tmp_path, edit, message):
    copy = tmp_path / 'repo'
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns('.git', '.venv', 'MNIST', 'celebA', 'tests', '.cache'))
    text = (copy / 'config.py').read_text()
    assert edit[0] in text
    (copy / 'config.py').write_text(text.replace(edit[0], edit[1], 1))
    result = subprocess.run([sys.executable, 'vae.py', '--run_directory', tmp_path / 'run'], cwd=copy,
                            capture_output=True, text=True, timeout=300)
    assert_refused(result, message)
    assert not (tmp_path / 'run').exists()


def test_tf_config_is_checked_with_the_rest(monkeypatch):
    monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': {'ps': ['a:1'], 'worker': ['b:2']},
                                                'task': {'type': 'worker', 'index': 3}}))
    with pytest.raises(UserError, match='task 3 is not in the 1 worker tasks'):
        command_line.parse_command_line([])


@pytest.mark.parametrize('args, message', [
    (['--kl_cycle_ramp', '1e-46'], 'kl_cycle_ramp must be a float32 number'),
    (['--free_bits', '1e39'], 'free_bits must be a float32 number'),
    (['--kl_weight', '1e-40'], 'kl_weight must be a float32 number'),
    (['--train_samples', '5000'], 'decoder passes a step (a tower), over the'),
    (['--train_samples', '2000000'], 'lower --train_samples or --batch_size'),
    (['--batch_size', str(2 ** 40)], 'batch_size must be below 2**31'),
    (['--dataset', 'celebA', '--num_test_images', '-100'], 'num_test_images must be >= 0, got -100'),
    (['--output_head', 'conv_tanh', '--decoder_strides', '1,2,2', '--encoder_strides', '2,2,1'],
     'MNIST images are in [0, 1] but output_head conv_tanh draws them in [-1, 1]'),
    (['--dataset', 'celebA', '--output_head', 'conv_sigmoid'], 'celebA images are in [-1, 1] but output_head'),
    (['--dataset', 'celebA', '--likelihood', 'bernoulli'], 'likelihood bernoulli scores pixels in [0, 1]'),
    (['--z_dim', '2.5'], "--z_dim '2.5' is not a valid int"),
])
def test_values_out_of_range_are_refused_with_the_key(args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        command_line.parse_command_line(args)


def test_a_damaged_or_contradicting_config_json_says_what_to_do(trained):
    saved = json.load(open(trained / 'config.json'))
    (trained / 'config.json').write_text(json.dumps({**saved, 'dataset': 'cifar'}))
    before = snapshot(trained)
    result = run_script('vae_inference.py', '--run_directory', trained)
    assert_refused(result, f"dataset must be one of MNIST, celebA, got 'cifar' in {trained}/config.json", trained,
                   before)
    (trained / 'config.json').write_text(json.dumps({**saved, 'z_dim': 8}))
    before = snapshot(trained)
    result = run_script('vae_inference.py', '--run_directory', trained)
    assert_refused(result, 'config.json does not describe this checkpoint', trained, before)
    (trained / 'config.json').write_text(json.dumps({**saved, 'z_dim': 4.5}))
    result = run_script('vae.py', '--run_directory', trained, '--num_epoch', '3')
    assert_refused(result, f'z_dim must be an integer, got 4.5 in {trained}/config.json')


def test_a_model_key_missing_from_config_json_is_refused_by_name(trained):
    # Without kl_weight, config.py's value would set another decoder variance: other numbers, silently.
    saved = json.load(open(trained / 'config.json'))
    del saved['kl_weight']
    (trained / 'config.json').write_text(json.dumps(saved))
    before = snapshot(trained)
    evaluate = ['--evaluate', '--k', '2', '--num_test', '10']
    for script, args in (('vae.py', ['--num_epoch', '3']), ('vae_inference.py', evaluate)):
        assert_refused(run_script(script, '--run_directory', trained, *args),
                       f'{trained}/config.json lacks kl_weight, which the run was trained with', trained, before)
    result = run_script('vae_inference.py', '--run_directory', trained, '--kl_weight', '0.0005', *evaluate)
    assert result.returncode == 0, result.stderr  # stated on the command line, it is the user's word


def test_keys_added_to_config_json_by_hand_are_kept_by_a_resume(trained):
    saved = json.load(open(trained / 'config.json'))
    (trained / 'config.json').write_text(json.dumps({**saved, 'note': 'the learning-rate sweep, run A'}))
    result = run_script('vae.py', '--run_directory', trained, '--num_epoch', '3', '--learning_rate', '0.001')
    assert result.returncode == 0, result.stderr
    resumed = json.load(open(trained / 'config.json'))
    assert resumed['note'] == 'the learning-rate sweep, run A' and resumed['learning_rate'] == 0.001


def test_a_non_finite_test_elbo_stops_like_a_non_finite_loss(tmp_path, mnist):
    # kl_weight 1e-40 is refused on the command line; here it gets past to reach the check of the saves: the
    # Gaussian decoder's variance kl_weight * D / 2 makes the test log-likelihood overflow float32.
    config = {**tiny_config(tmp_path / 'run', '--num_epoch', '1'), 'kl_weight': 1e-40}
    with pytest.raises(UserError, match='the test negative ELBO became (inf|nan) at step 9 of epoch 0'):
        vae.train(config, subset(mnist, 640))
    assert not run_folder.all_checkpoints(tmp_path / 'run' / 'models')


def test_an_export_resumed_or_a_checkpoint_state_folder_say_the_right_thing(trained, tmp_path):
    shared = tmp_path / 'shared'
    assert run_script('vae_inference.py', '--run_directory', trained, '--export', shared).returncode == 0
    result = run_script('vae.py', '--run_directory', shared, '--num_epoch', '3')
    assert_refused(result, 'holds weights only (no optimizer state or step: an --export); it cannot be trained on')
    os.mkdir(trained / 'models' / 'checkpoint')  # the state file TensorFlow would write; none is written
    result = run_script('vae.py', '--run_directory', trained, '--num_epoch', '3')
    assert result.returncode == 0 and 'saved model_2' in result.stdout, result.stderr


# ---------------------------------------------------------------- evaluations are records

def test_a_picture_of_other_settings_never_replaces_the_checkpoints_default_one(trained):
    # --num_test 20 replaced the full reconstructions grid with 20 images and black, --seed 7 the generations.
    assert run_script('vae_inference.py', '--run_directory', trained).returncode == 0
    defaults = {name: (trained / name).read_bytes() for name in ('reconstructions_model_1.png',
                                                                 'generations_model_1.png')}
    result = run_script('vae_inference.py', '--run_directory', trained, '--num_test', '20', '--seed', '7')
    assert result.returncode == 0, result.stderr
    assert f'wrote {trained}/reconstructions_model_1-n20.png' in result.stdout
    assert f'wrote {trained}/generations_model_1-seed7.png' in result.stdout
    assert {name: (trained / name).read_bytes() for name in defaults} == defaults


def test_every_evaluation_is_kept_and_pictures_are_named_by_their_checkpoint(trained):
    runs = [['--evaluate', '--k', '20', '--num_test', '30'], ['--evaluate', '--checkpoint', '0', '--k', '1',
                                                              '--num_test', '10']]
    for args in runs:
        assert run_script('vae_inference.py', '--run_directory', trained, *args).returncode == 0
    records = vae_inference.evaluation_records(trained)
    assert sorted((r['checkpoint'], r['iwae_k'], r['test_images']) for r in records.values()) == \
        [('model_0', 1, 10), ('model_1', 20, 30)]
    before = snapshot(trained)
    result = run_script('vae_inference.py', '--run_directory', trained, *runs[0])  # found again, not redone
    assert result.returncode == 0 and 'holds this evaluation' in result.stdout and snapshot(trained) == before
    for checkpoint in ('1', '0'):
        assert run_script('vae_inference.py', '--run_directory', trained, '--checkpoint', checkpoint).returncode == 0
    assert (trained / 'reconstructions_model_1.png').exists() and (trained / 'generations_model_0.png').exists()


def test_a_kept_record_that_is_not_this_evaluation_is_computed_again(trained):
    # A record is trusted only when its content is the evaluation its name stands for, with finite numbers:
    # a string for a number, a missing metric, another k or another decoder (a kl_weight put back in config.json).
    args = ['--run_directory', trained, '--evaluate', '--k', '3', '--num_test', '10']
    assert run_script('vae_inference.py', *args).returncode == 0
    [path] = vae_inference.evaluation_records(trained)
    good = json.load(open(path))
    for bad in ({**good, 'negative_iwae_nats': 'low'}, {k: v for k, v in good.items() if k != 'kl_nats'},
                {**good, 'iwae_k': 4}, {**good, 'decoder': 'gaussian, fixed variance sigma^2 = 0.784'}):
        with open(path, 'w') as f:
            json.dump(bad, f)
        result = run_script('vae_inference.py', *args)
        assert result.returncode == 0 and 'computing it again' in result.stdout, result.stdout + result.stderr
        assert json.load(open(path)) == good  # the same numbers: the bound's noise is seeded per image


def test_a_checkpoint_removed_after_its_restore_is_one_line_and_no_record(trained, monkeypatch):
    restore = vae_inference.restore

    def then_removed(*args, **kwargs):  # the checkpoint's files deleted while the evaluation starts
        restored = restore(*args, **kwargs)
        for path in (trained / 'models').glob('model_1.*'):
            path.unlink()
        return restored
    monkeypatch.setattr(vae_inference, 'restore', then_removed)
    result = run_script('vae_inference.py', '--run_directory', trained, '--evaluate', '--k', '2', '--num_test', '10')
    assert_refused(result, 'model_1 has lost its .index or .data file since it was restored')
    assert not (trained / 'evaluations').exists()


def test_progress_of_other_weights_or_a_damaged_file_is_never_used(trained, tmp_path, monkeypatch):
    config, _ = command_line.parse_command_line(['--run_directory', str(trained)], from_run=True)
    sess, outputs, _ = vae_inference.restore(config)
    images = datasets.evaluation_images(config, datasets.load_mnist(MNIST_DIR)['test_images'][:6])
    progress = str(tmp_path / 'progress.npz')
    with sess:
        clean = vae_inference.importance_weighted_bound(sess, outputs, config, images, 4)
        # Another checkpoint's half-done progress at the same k and images: a warning, then a clean result.
        np.savez(progress, identity='weights=other', done=3, elbo=np.full(6, -1e3), iwae=np.full(6, -1e3))
        for content in (None, b'garbage', b''):
            if content is not None:
                with open(progress, 'wb') as f:
                    f.write(content)
            result = vae_inference.importance_weighted_bound(sess, outputs, config, images, 4, progress, 'mine')
            assert np.array_equal(result[0], clean[0]) and np.array_equal(result[1], clean[1])
        # This evaluation's own progress holding a NaN: refused at every rerun before; now a fresh start.
        monkeypatch.setattr(vae_inference, 'SAVE_SECONDS', -1)  # progress saved after every run: this one's identity
        vae_inference.importance_weighted_bound(sess, outputs, config, images, 4, progress, 'mine')
        with np.load(progress) as kept:
            saved = dict(kept)
        monkeypatch.setattr(vae_inference, 'SAVE_SECONDS', 10 ** 9)
        np.savez(progress, **{**saved, 'done': 3, 'elbo': np.full(6, np.nan)})
        result = vae_inference.importance_weighted_bound(sess, outputs, config, images, 4, progress, 'mine')
        assert np.array_equal(result[0], clean[0]) and np.array_equal(result[1], clean[1])


# ---------------------------------------------------------------- all or nothing, one writer

def test_an_export_is_all_or_nothing(trained, tmp_path, monkeypatch):
    destination = tmp_path / 'shared'
    destination.mkdir()
    (destination / 'metrics.json').write_text('{}')  # another run's record: a non-empty folder is refused
    result = run_script('vae_inference.py', '--run_directory', trained, '--export', destination)
    assert_refused(result, 'is a non-empty folder; choose a new or empty folder')
    config, _ = command_line.parse_command_line(['--run_directory', str(trained)], from_run=True)
    target = tmp_path / 'new'

    def full_disk(*args, **kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(vae_inference.shutil, 'copy', full_disk)  # the frames meet a full disk
    with pytest.raises(UserError, match='No space left on device.*nothing was written'):
        vae_inference.export_run(config, 1, str(target))
    monkeypatch.setattr(vae_inference.shutil, 'copy', lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        vae_inference.export_run(config, 1, str(target))
    assert not target.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith('.new')]
    monkeypatch.undo()
    vae_inference.export_run(config, 1, str(target))  # a retry goes through
    assert run_folder.list_checkpoints(target / 'models') and (target / 'config.json').exists()


def test_ctrl_c_just_after_a_record_is_written_says_it_is_kept(trained, monkeypatch):
    write_record = vae_inference.write_record

    def then_ctrl_c(*args):
        write_record(*args)
        raise KeyboardInterrupt
    monkeypatch.setattr(vae_inference, 'write_record', then_ctrl_c)
    result = run_script('vae_inference.py', '--run_directory', trained, '--evaluate', '--k', '2', '--num_test', '10')
    assert result.returncode == 130, result.stderr
    assert 'every file written before it is kept whole' in result.stderr
    assert len(vae_inference.evaluation_records(trained)) == 1


def test_the_writer_leaves_the_old_file_or_the_new_one_and_no_temporary(tmp_path):
    path = str(tmp_path / 'picture.png')
    write_atomically(path, lambda f: f.write(b'old'))

    def failing(f):
        f.write(b'half')
        raise ValueError('a frame of another size')
    with pytest.raises(ValueError):
        write_atomically(path, failing)
    assert open(path, 'rb').read() == b'old' and os.listdir(tmp_path) == ['picture.png']
    # Two writers of one file never share a temporary file: each one's is its own.
    names = set()
    temporary_name = lambda f: os.readlink(f'/proc/self/fd/{f.fileno()}')
    write_atomically(path, lambda f: names.add(temporary_name(f)) or f.write(b'a'))
    write_atomically(path, lambda f: names.add(temporary_name(f)) or f.write(b'b'))
    assert len(names) == 2 and open(path, 'rb').read() == b'b'
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere
            with pytest.raises(UserError, match='cannot write'):
                write_atomically(path, lambda f: f.write(b'c'))
    finally:
        os.chmod(tmp_path, 0o700)


def test_gifs_of_one_frame_and_frames_of_another_size(tmp_path):
    frames = []
    for index, size in enumerate([(20, 20), (20, 20), (24, 20)]):
        frames.append(str(tmp_path / f'epoch_{index:04d}.png'))
        Image.new('RGB', size, (index * 60, 0, 0)).save(frames[-1])
    pictures.save_gif(str(tmp_path / 'one.gif'), frames[:1])
    with Image.open(tmp_path / 'one.gif') as gif:
        assert gif.n_frames == 1 and gif.size == (20, 20)
    with pytest.raises(UserError, match='epoch_0002.png is 24x20 but .*epoch_0000.png is 20x20'):
        pictures.save_gif(str(tmp_path / 'three.gif'), frames)
    assert not (tmp_path / 'three.gif').exists() and not [n for n in os.listdir(tmp_path) if n.endswith('.part')]


def test_the_scatter_of_one_image_or_a_one_dimensional_latent(tmp_path):
    for z_means in (np.ones((1, 4)), np.arange(5.0)[:, None]):
        path = str(tmp_path / f'scatter_{z_means.shape[1]}.png')
        vae_inference.save_scatter(path, z_means, None, 'test')
        assert Image.open(path).size == (600, 550)


# ---------------------------------------------------------------- the data's files

@pytest.mark.parametrize('content, message', [
    ('twice', 'lists 000001.jpg twice (splits 0 and 0)'),
    ('two splits', 'lists 000001.jpg twice (splits 0 and 2)'),
    ('folder', 'is not a readable CelebA partition file (it is a folder)'),
    ('jpeg', 'is not a readable CelebA partition file (it holds NUL bytes'),
    ('latin-1', 'is not a readable CelebA partition file (not UTF-8 text)'),
    ('utf-16', 'is not a readable CelebA partition file (it holds NUL bytes'),
])
def test_a_bad_partition_file_is_one_line(tmp_path, content, message):
    folder = tmp_path / 'img_align_celeba'
    names = make_celeba(folder, count=12, partition=(8, 2, 2))
    partition = folder / 'list_eval_partition.txt'
    lines = partition.read_text()
    if content == 'twice':
        partition.write_text(lines + f'{names[0]} 0\n')
    elif content == 'two splits':
        partition.write_text(lines + f'{names[0]} 2\n')
    elif content == 'folder':
        partition.unlink()
        partition.mkdir()
    elif content == 'jpeg':
        shutil.copy(folder / names[0], partition)
    else:
        partition.write_bytes((lines + 'é').encode(content))
    with pytest.raises(UserError, match=re.escape(message)):
        datasets.load_dataset(celeba_config(folder))


def test_a_celeba_cache_folder_that_is_a_file_is_one_line(tmp_path):
    folder = tmp_path / 'img_align_celeba'
    make_celeba(folder, count=12, partition=(8, 2, 2))
    (tmp_path / 'cache').write_text('')
    config = celeba_config(folder, '--celebA_cache', 'true', '--celebA_cache_directory', str(tmp_path / 'cache'))
    with pytest.raises(UserError, match='cannot create .*cache .*is a file where a folder goes: move it away, or '
                                        'choose another --celebA_cache_directory'):
        datasets.load_dataset(config)


# ---------------------------------------------------------------- signals and the pinned install

@pytest.mark.slow
@pytest.mark.process  # SIGINT to a training process, at the line it prints
def test_ctrl_c_at_the_iwae_switch_saves_the_step_it_reached(tmp_path):
    run = tmp_path / 'run'
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'vae.py'), *BERNOULLI, '--num_epoch', '3',
                                '--run_directory', str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    for line in process.stdout:  # synchronised on the line the switch prints
        if line.startswith('objective: the IWAE bound'):
            process.send_signal(signal.SIGINT)
            break
    output, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert 'interrupted;' not in stderr and 'Traceback' not in stderr  # training saved it: not the generic line
    assert 'SIGINT: saved' in output and run_folder.list_checkpoints(run / 'models', 'interrupted')
    assert sorted(run_folder.list_checkpoints(run / 'models')) == [0]


def test_the_install_is_pinned():
    """Every package the README's install line installs, and each of theirs, has one exact version."""
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        lines = [line.split('#')[0].strip() for line in f]
    pins = [line for line in lines if line and not line.startswith('-')]
    assert pins and all('==' in line for line in pins), pins
    assert '-c constraints.txt' in lines
    with open(os.path.join(ROOT, 'constraints.txt')) as f:
        constraints = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    assert all('==' in line for line in constraints) and len(constraints) > len(pins)


# ---------------------------------------------------------------- the second review's cases

@pytest.mark.parametrize('tf_config, args, message', [
    (None, ['--run_directory', '/tmp/run[1]'], 'run_directory must be a path without *, ?, [ or ]'),
    (None, ['--dataset', ''], "unknown dataset ''"),
    (None, ['--encoder_filters', '4,,8'], "--encoder_filters '4,,8' is not a valid list"),
    (None, ['--task', '2'], 'worker task 2 needs a cluster'),
    ({'cluster': {'worker': ['a:1']}, 'task': {'type': 'worker', 'index': 5}}, [], 'worker task 5 needs a cluster'),
    ({'cluster': {'worker': ['a:1'], 'ps': ['b:2']}, 'task': {'type': 'worker', 'index': 1.7}}, [],
     'TF_CONFIG is not a cluster'),
    ({'cluster': {'worker': 'a:1', 'ps': ['b:2']}, 'task': {'type': 'worker', 'index': 0}}, [],
     'TF_CONFIG is not a cluster'),
    ({'cluster': {'chief': ['c:3'], 'worker': ['a:1'], 'ps': ['b:2']}, 'task': {'type': 'worker', 'index': 0}}, [],
     'TF_CONFIG is not a cluster'),
])
def test_paths_lists_and_clusters_that_would_go_wrong_are_refused(monkeypatch, tf_config, args, message):
    if tf_config:
        monkeypatch.setenv('TF_CONFIG', json.dumps(tf_config))
    with pytest.raises(UserError, match=re.escape(message)):
        command_line.parse_command_line(args)
    monkeypatch.delenv('TF_CONFIG', raising=False)
    with pytest.raises(UserError, match=re.escape('--k must be in 1..10,000,000')):
        vae_inference.main(['--k', str(10 ** 8)])


def test_damaged_records_logs_and_older_config_json_on_a_trained_run(trained, tmp_path):
    # A record cut short is computed again; a log cut short by a kill still gives its curves.
    args = ['--run_directory', trained, '--evaluate', '--k', '3', '--num_test', '10']
    assert run_script('vae_inference.py', *args).returncode == 0
    record, = vae_inference.evaluation_records(trained)
    with open(record, 'r+') as f:
        f.truncate(50)
    result = run_script('vae_inference.py', *args)
    assert result.returncode == 0 and 'is damaged; computing it again' in result.stdout, result.stderr
    assert json.load(open(record))['iwae_k'] == 3
    log = sorted((trained / 'logs').glob('events.out.tfevents.*'))[-1]
    log.write_bytes(log.read_bytes()[:-37])
    result = run_script('vae_inference.py', '--run_directory', trained, '--curves')
    assert result.returncode == 0 and 'ends in a damaged record' in result.stdout, result.stderr
    # One projector embedding per checkpoint, each with its own labels and sprite.
    for checkpoint, count in (('0', '30'), ('1', '50')):
        assert run_script('vae_inference.py', '--run_directory', trained, '--projector', '--checkpoint', checkpoint,
                          '--num_test', count).returncode == 0
    assert len((trained / 'logs' / 'projector_labels_model_0-n30.tsv').read_text().split()) == 30
    assert (trained / 'logs' / 'projector_sprite_model_1-n50.png').exists()
    # Another subset of the same checkpoint: an embedding of its own, beside the first (named by --num_test).
    assert run_script('vae_inference.py', '--run_directory', trained, '--projector', '--num_test', '20').returncode == 0
    assert len((trained / 'logs' / 'projector_labels_model_1-n20.tsv').read_text().split()) == 20
    assert len((trained / 'logs' / 'projector_labels_model_1-n50.tsv').read_text().split()) == 50
    assert (trained / 'logs' / 'projector_config.pbtxt').read_text().count('embeddings {') == 3
    # Exports inside the run folder or onto a link are refused.
    os.symlink(tmp_path / 'empty', tmp_path / 'link')
    for destination, message in ((trained / 'shared', 'is inside the run folder'),
                                 (tmp_path / 'link', 'is a symbolic link')):
        assert_refused(run_script('vae_inference.py', '--run_directory', trained, '--export', destination), message)
    # Another preset named for the run, a damaged steps_per_epoch: refused. A key an older config.json lacks,
    # set by a flag on resume, is recorded as a change from an unknown value.
    result = run_script('vae.py', '--run_directory', trained, '--dataset', 'MNIST_bernoulli', '--num_epoch', '3')
    assert_refused(result, 'was trained from preset MNIST but --dataset says MNIST_bernoulli')
    saved = json.load(open(trained / 'config.json'))
    (trained / 'config.json').write_text(json.dumps({**saved, 'steps_per_epoch': 0}))
    assert_refused(run_script('vae.py', '--run_directory', trained, '--num_epoch', '3'), 'a damaged record')
    del saved['free_bits']
    (trained / 'config.json').write_text(json.dumps(saved))
    result = run_script('vae.py', '--run_directory', trained, '--num_epoch', '3', '--free_bits', '0.5')
    assert result.returncode == 0, result.stderr
    assert 'changing free_bits None -> 0.5 from epoch 2' in result.stdout
    assert {'key': 'free_bits', 'from': None, 'to': 0.5, 'epoch': 2, 'step': 20} in \
        json.load(open(trained / 'config.json'))['changes']


@pytest.mark.slow  # trains or fits: the fast tier stays under 3 minutes
def test_fresh_starts_beside_the_folder_a_path_names_and_the_root_is_no_run_folder(trained):
    # 'runs/a/.' and 'runs/a/' are runs/a: its new folder is runs/a-2, never runs/a/.-2 (a folder inside the run);
    # '/' holds the system's files: refused, as an empty run_directory is.
    result = run_script('vae.py', *BASE, '--run_directory', f'{trained}/.', '--fresh', '--num_epoch', '1')
    assert result.returncode == 0 and f'training in {trained}-2' in result.stdout, result.stderr
    assert not os.path.exists(f'{trained}/.-2') and os.path.isfile(f'{trained}-2/config.json')
    for script in ('vae.py', 'vae_inference.py'):
        assert_refused(run_script(script, *BASE, '--run_directory', '/'),
                       "error: run_directory / is the file system's root; pass --run_directory FOLDER")
    assert not os.path.exists('/config.json')


def test_fresh_skips_a_folder_that_holds_another_runs_config(trained):
    other = f'{trained}-2'
    os.makedirs(other)
    shutil.copy(trained / 'config.json', other)
    result = run_script('vae.py', *BASE, '--run_directory', trained, '--fresh', '--num_epoch', '1')
    assert result.returncode == 0 and f'training in {trained}-3' in result.stdout, result.stderr
    assert os.listdir(other) == ['config.json']
