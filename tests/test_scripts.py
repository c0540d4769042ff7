"""vae.py and vae_inference.py as a user runs them: outputs, resume, --fresh and clear errors."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector

import command_line
import config as config_module
import config_keys
import datasets
import pictures
import process
import run_folder
import vae
import vae_inference
from conftest import BASE, MNIST_DIR, ROOT, TINY, evaluation_record, keys_only, run_script

FAST = TINY + ['--batch_size', '1000', '--num_epoch', '1']  # 60 steps an epoch


def png_size(path):
    with Image.open(path) as image:
        image.load()  # a truncated file fails here
        return image.size


@pytest.mark.slow
def test_train_resume_and_inference_end_to_end(tmp_path):
    run = tmp_path / 'run'
    result = run_script('vae.py', *FAST, '--run_directory', run)
    assert result.returncode == 0, result.stderr
    assert 'epoch   0  loss' in result.stdout
    for folder in ('op-real', 'op-recons', 'op-gen'):
        assert png_size(run / folder / 'epoch_0000.png') == (5 * 28 * 2, 5 * 28 * 2 + 16)
    assert os.path.exists(run / 'models' / 'model_0.index')
    assert os.listdir(run / 'logs')

    # Running again with more epochs resumes at epoch 1 instead of starting over.
    result = run_script('vae.py', *FAST, '--run_directory', run, '--num_epoch', '3', '--save_every', '2')
    assert result.returncode == 0, result.stderr
    assert 'resuming' in result.stdout and 'model_0' in result.stdout
    assert 'epoch   0' not in result.stdout and 'epoch   1' in result.stdout and 'epoch   2' in result.stdout
    assert sorted(run_folder.list_checkpoints(run / 'models')) == [0, 2]
    assert [epoch for epoch, _ in pictures.epoch_frames(run / 'op-gen')] == [0, 2]

    result = run_script('vae_inference.py', *FAST, '--run_directory', run)
    assert result.returncode == 0, result.stderr
    assert 'model_2' in result.stdout
    assert png_size(run / 'reconstructions_model_2.png') == (10 * 28 * 2, 10 * 28 * 2 + 16)
    assert png_size(run / 'generations_model_2.png') == (10 * 28 * 2, 10 * 28 * 2 + 16)
    with Image.open(run / 'generations.gif') as gif:
        assert gif.n_frames == 2 and gif.size == (5 * 28 * 2, 5 * 28 * 2 + 16)

    result = run_script('vae_inference.py', *FAST, '--run_directory', run, '--checkpoint', '0')
    assert result.returncode == 0 and 'model_0' in result.stdout


def test_fresh_keeps_the_old_run_and_trains_in_a_new_folder(trained):
    run = trained
    before = sorted(os.listdir(run / 'models'))
    result = run_script('vae.py', *BASE, '--run_directory', run, '--fresh', '--num_epoch', '1')
    assert result.returncode == 0, result.stderr
    assert f'training in {run}-2' in result.stdout
    assert sorted(os.listdir(run / 'models')) == before
    assert os.path.exists(f'{run}-2/models/model_0.index')


BAD_COMMAND_LINES = [
    (['--dataset', 'cifar'], "unknown dataset 'cifar'"),
    (['--zdim', '3'], 'unknown option --zdim'),
    (['--z_dim', 'three'], "--z_dim 'three' is not a valid int"),
    (['--z_dim', '0'], 'z_dim must be positive'),
    (['--batch_size', '-5'], 'batch_size must be positive'),
    (['--num_epoch', '0'], 'num_epoch must be positive'),
    (['--learning_rate', '-1'], 'learning_rate must be positive'),
    (['--deterministic', 'maybe'], "--deterministic 'maybe' is not a valid bool"),
    (['--encoder_filters', '4,x,8'], "--encoder_filters '4,x,8' is not a valid list"),
    (['--encoder_filters', '4,8'], 'need the same length'),
    (['--z_dim'], 'argument --z_dim: expected one argument'),
    (['stray'], "unexpected argument 'stray'"),
    (['--learning_rate', 'inf'], 'learning_rate must be positive and finite'),
    (['--kl_weight', 'nan'], 'kl_weight must be >= 0 and finite'),
    (['--kl_weight', '0'], 'kl_weight 0 with likelihood gaussian makes the decoder variance'),
    (['--seed', '-1'], 'seed must be in [0, 2**32)'),
    (['--seed', str(2 ** 32)], 'seed must be in [0, 2**32)'),
    (['--run_directory', ''], 'run_directory is empty'),
    (['--output_head', 'conv_tanh'], 'strides make 32x32 images, not 28x28'),
    (['--evaluate'], 'unknown option --evaluate'),  # vae_inference.py's flag given to vae.py
    (['--kl_schedule', 'cosine'], 'kl_schedule must be one of constant, linear, cyclical'),
    (['--objective', 'vae'], 'objective must be one of elbo, iwae'),
    (['--train_samples', '0'], 'train_samples must be positive'),
    (['--iwae_start_epoch', '-1'], 'iwae_start_epoch must be >= 0'),
    (['--free_bits', '-0.5'], 'free_bits must be >= 0 and finite'),
    (['--kl_cycle_ramp', '0'], 'kl_cycle_ramp must be in (0, 1], got 0.0; pass another --kl_cycle_ramp'),
    (['--learning_rate_decay', '1.5'], 'learning_rate_decay must be in (0, 1]'),
    (['--kl_warmup_epochs', '5'], '--kl_warmup_epochs applies only with kl_schedule linear, and this run has '
                                  'kl_schedule constant'),  # keys a run would silently ignore
    (['--kl_schedule', 'linear', '--kl_cycle_ramp', '0.3'], '--kl_cycle_ramp applies only with kl_schedule cyclical'),
    (['--iwae_start_epoch', '3'], '--iwae_start_epoch applies only with objective iwae'),
]


@pytest.mark.parametrize('args, message', BAD_COMMAND_LINES)
def test_bad_command_lines_are_refused_with_the_fix(args, message):
    with pytest.raises(process.UserError, match=re.escape(message)):
        command_line.parse_command_line(args)


@pytest.mark.parametrize('script, args, message', [
    ('vae.py', ['--dataset', 'cifar'], "unknown dataset 'cifar'"),
    ('vae.py', ['--z_dim', 'three'], "--z_dim 'three' is not a valid int"),
    ('vae_inference.py', ['--zdim', '3'], 'unknown option --zdim'),
    ('vae_inference.py', ['--checkpoint', 'last'], "--checkpoint 'last' is not a valid int"),
    ('vae_inference.py', ['--checkpoint', '-5'], '--checkpoint -5 is no checkpoint'),
    ('vae_inference.py', ['--interpolate', '--num_test', '1'], 'pass --num_test 2 or more'),
    ('vae.py', ['--learning_rate', 'inf'], 'learning_rate must be positive and finite'),
    ('vae.py', ['--evaluate'], 'unknown option --evaluate'),
])
def test_scripts_fail_with_one_clear_line(tmp_path, script, args, message):
    result = run_script(script, '--run_directory', tmp_path / 'run', '--data_directory', MNIST_DIR, *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith('error: ') and message in result.stderr
    assert not os.path.exists(tmp_path / 'run')


def test_inference_without_a_checkpoint_fails_clearly(tmp_path):
    result = run_script('vae_inference.py', *FAST, '--run_directory', tmp_path / 'empty')
    assert result.returncode == 1
    assert result.stderr.strip() == f'error: no checkpoint model_<epoch> in {tmp_path}/empty/models; train first ' \
                                    'with python vae.py (same --dataset / --run_directory)'


def test_a_checkpoint_of_another_architecture_is_refused_by_name(trained):
    run = trained
    assert json.load(open(run / 'config.json'))['z_dim'] == 4
    result = run_script('vae_inference.py', *BASE, '--run_directory', run, '--z_dim', '8')
    assert result.returncode == 1
    assert 'trained with z_dim=4 but --z_dim says 8' in result.stderr
    result = run_script('vae_inference.py', *BASE, '--run_directory', run, '--encoder_filters', '4,8,16')
    assert result.returncode == 1 and 'trained with encoder_filters=4,8,8 but --encoder_filters says 4,8,16; leave ' \
        '--encoder_filters out' in result.stderr
    result = run_script('vae_inference.py', *BASE, '--run_directory', run, '--checkpoint', '7')
    assert result.returncode == 1 and 'no checkpoint model_7' in result.stderr and 'it has epochs 0, 1' in result.stderr
    # Training with another architecture on the same folder is refused too, and the checkpoint survives.
    result = run_script('vae.py', *BASE, '--run_directory', run, '--z_dim', '8')
    assert result.returncode == 1 and 'z_dim=4' in result.stderr
    assert os.path.exists(run / 'models' / 'model_0.index')


def test_a_checkpoint_without_its_config_json_is_still_refused_clearly(trained):
    run = trained
    os.remove(run / 'config.json')
    result = run_script('vae_inference.py', *BASE, '--run_directory', run, '--z_dim', '8')
    assert result.returncode == 1
    assert result.stderr.startswith(f'error: {run}/models/model_1 does not fit the configured model')
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unwritable_run_folder_fails_clearly(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    result = run_script('vae.py', *FAST, '--run_directory', blocker / 'run')
    assert result.returncode == 1
    assert result.stderr.startswith(f'error: cannot create {blocker}/run/models') and 'writable' in result.stderr
    assert blocker.read_text() == 'not a folder'


def test_a_batch_larger_than_the_training_set_is_refused_before_anything_is_written(tmp_path, trained):
    config, _ = command_line.parse_command_line(['--data_directory', MNIST_DIR, '--batch_size', '60001',
                                                 '--run_directory', str(tmp_path / 'run')])
    with pytest.raises(process.UserError, match='60000 training images make no step of 60001 images'):
        vae.train(config, datasets.load_dataset(config))
    assert not os.path.exists(tmp_path / 'run')
    # Through the script, with --fresh too: no folder is made, and the one --fresh claimed is given back.
    for folder in ([tmp_path / 'run'], [trained, '--fresh']):
        result = run_script('vae.py', '--data_directory', MNIST_DIR, '--batch_size', '60001', '--run_directory',
                            *folder)
        assert result.returncode == 1 and 'make no step of 60001 images' in result.stderr, result.stderr
    assert not os.path.exists(tmp_path / 'run') and not os.path.exists(f'{trained}-2')


def test_a_missing_data_folder_offline_names_the_folder_to_fill(tmp_path):
    with pytest.raises(process.UserError, match=f'missing from {tmp_path}/nowhere .* put the four MNIST IDX files'):
        datasets.load_mnist(str(tmp_path / 'nowhere'), mirrors=('file:///nonexistent/',))


def test_a_data_folder_that_is_a_file_is_refused(tmp_path):
    a_file = tmp_path / 'mnist'
    a_file.write_text('not a folder')
    with pytest.raises(process.UserError, match='is a file, not a folder'):
        datasets.load_mnist(str(a_file), mirrors=())
    assert a_file.read_text() == 'not a folder'


def normalised(text):
    """text without whitespace: argparse wraps the help at spaces and hyphens."""
    return ''.join(text.split())


@pytest.mark.parametrize('dataset', sorted(config_module.configs))
def test_help_lists_every_config_key_with_its_type_default_and_meaning(dataset, capsys):
    for flags in (vae.FLAGS, vae_inference.FLAGS):
        with pytest.raises(SystemExit) as exit:
            command_line.parse_command_line(['--dataset', dataset, '--help'], flags)
        assert exit.value.code == 0
        text = normalised(capsys.readouterr().out)
        meanings = {key: meaning for group in config_module.descriptions.values() for key, meaning in group.items()}
        for key, value in config_module.configs[dataset].items():
            assert normalised(meanings[key]) in text, key
            if key != 'dataset':
                kind = config_keys.TYPE_NAMES[type(value)]
                default = normalised(f'(default: {config_keys.flag_value(value) or "none"})')
                assert f'--{key}{kind}' in text and default in text, key
        for name, (default, meaning) in flags.items():
            assert f'--{name}' in text and normalised(meaning) in text
        for group in config_module.descriptions:
            assert normalised(f'{group}:') in text


def test_every_described_key_is_in_a_config_and_every_key_described():
    described = [key for group in config_module.descriptions.values() for key in group]
    assert len(described) == len(set(described))
    assert set(described) == set().union(*config_module.configs.values())


def test_both_flag_forms_give_the_config_of_the_dict_with_those_values():
    spaced = ['--z_dim', '8', '--encoder_filters', '4,8,8', '--deterministic', 'false', '--learning_rate', '0.001',
              '--likelihood', 'bernoulli', '--kl_schedule', 'cyclical']
    joined = [f'{key}={value}' for key, value in zip(spaced[::2], spaced[1::2])]
    expected = dict(config_module.config_mnist, z_dim=8, encoder_filters=[4, 8, 8], deterministic=False,
                    learning_rate=0.001, likelihood='bernoulli', kl_schedule='cyclical')
    assert keys_only(command_line.parse_command_line(spaced)[0]) == expected == \
        keys_only(command_line.parse_command_line(joined)[0])
    assert keys_only(command_line.parse_command_line(['--dataset=MNIST_2d'])[0]) == config_module.config_mnist_2d
    config, options = command_line.parse_command_line(['--k=7', '--evaluate', '--checkpoint', '3'], vae_inference.FLAGS)
    assert keys_only(config) == config_module.config_mnist and options['k'] == 7 and options['evaluate'] and \
        options['checkpoint'] == 3 and not options['projector']


@pytest.mark.slow
def test_a_run_with_other_architecture_flags_is_restored_from_its_folder_alone(tmp_path):
    run = tmp_path / 'run'
    assert run_script('vae.py', *TINY, '--num_train_images', '640', '--kernel_size', '5', '--run_directory',
                      run).returncode == 0
    result = run_script('vae_inference.py', '--run_directory', run, '--evaluate', '--k', '3', '--num_test', '20')
    assert result.returncode == 0, result.stderr
    assert 'restored' in result.stdout and evaluation_record(run)['z_dim'] == 4
    # --export: the weights alone, restorable from that folder, scoring the same (the noise is seeded per image).
    shared = tmp_path / 'shared'
    assert run_script('vae_inference.py', '--run_directory', run, '--export', shared).returncode == 0
    names = [name for name, _ in tf.train.list_variables(str(shared / 'models' / 'model_1'))]
    assert names and not [name for name in names if 'Adam' in name or name == 'global_step']
    trained = json.load(open(run / 'config.json'))
    assert json.load(open(shared / 'config.json')) == {**trained, 'run_directory': str(shared)}
    result = run_script('vae_inference.py', '--run_directory', shared, '--evaluate', '--k', '3', '--num_test', '20')
    assert result.returncode == 0, result.stderr
    assert evaluation_record(shared)['negative_iwae_nats'] == evaluation_record(run)['negative_iwae_nats']
    assert run_script('vae_inference.py', '--run_directory', shared).returncode == 0
    assert (shared / 'generations.gif').exists()
    # Resuming takes them from there too; a flag may repeat the run's value but not contradict it.
    result = run_script('vae.py', '--run_directory', run, '--num_epoch', '3', '--z_dim', '4')
    assert result.returncode == 0 and 'resuming' in result.stdout, result.stderr
    result = run_script('vae_inference.py', '--run_directory', run, '--kernel_size', '3')
    assert result.returncode == 1
    assert result.stderr == (f"error: {run} was trained with kernel_size=5 but --kernel_size says 3; leave "
                             "--kernel_size out to use the run's value, or pass --fresh (training) for a new run "
                             "folder\n")


def test_tensorboard_gets_posterior_histograms_the_kl_per_dimension_and_the_projector(trained, mnist):
    run = trained  # the tiny Gaussian run: TINY on 640 images
    tags, kl = {}, {}
    for path in (run / 'logs').glob('events.out.tfevents.*'):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(value.tag, value.WhichOneof('value'))
                if value.tag == 'rate' or value.tag.startswith('kl_dimension/'):
                    kl.setdefault(event.step, {})[value.tag] = value.simple_value
    assert tags['z_mean'] == tags['z_std'] == tags['kl_per_dimension'] == 'histo'
    assert {tag for tag in tags if tag.startswith('kl_dimension/')} == {f'kl_dimension/{i:03d}' for i in range(4)}
    for values in kl.values():  # the dimensions' KL adds up to the KL
        assert sum(v for tag, v in values.items() if tag != 'rate') == pytest.approx(values['rate'], rel=1e-4)

    result = run_script('vae_inference.py', '--run_directory', run, '--projector', '--num_test', '300')
    assert result.returncode == 0, result.stderr
    projector_config = projector.ProjectorConfig()
    text_format.Parse((run / 'logs' / 'projector_config.pbtxt').read_text(), projector_config)
    embedding, = projector_config.embeddings
    means = np.loadtxt(run / 'logs' / embedding.tensor_path, delimiter='\t')
    assert means.shape == (300, 4) and np.isfinite(means).all() and means.std(axis=0).min() > 0
    labels = (run / 'logs' / embedding.metadata_path).read_text().split()
    assert labels == [str(label) for label in mnist['test_labels'][:300]]
    assert list(embedding.sprite.single_image_dim) == [28, 28]
    with Image.open(run / 'logs' / embedding.sprite.image_path) as sprite:
        assert sprite.size == (18 * 28, 18 * 28)  # 300 images on an 18 x 18 grid
        first = np.asarray(sprite)[:28, :28]
    assert np.array_equal(first, np.round(mnist['test_images'][0, ..., 0] * 255).astype(np.uint8))


def test_the_committed_reference_run_is_the_preset_and_restores(tmp_path):
    """MNIST/results/bernoulli is what the README's results table reports: it must be a run of today's
    MNIST_bernoulli preset (a changed preset needs a new reference run) and restore on a fresh clone."""
    committed = os.path.join(ROOT, 'MNIST', 'results', 'bernoulli')
    with open(os.path.join(committed, 'config.json')) as f:
        trained = {**config_keys.LATER_KEYS, **json.load(f)}  # as a restore reads it
    preset = config_module.configs['MNIST_bernoulli']
    changed = {key: (trained.get(key), value) for key, value in preset.items()
               if trained.get(key) != value and key not in ('data_directory', 'run_directory')}
    assert not changed, f'(reference run, preset) differ: {changed}'

    run = tmp_path / 'run'  # what a restore needs, copied: --evaluate writes into the folder
    shutil.copytree(os.path.join(committed, 'models'), run / 'models')
    shutil.copy(os.path.join(committed, 'config.json'), run)
    result = run_script('vae_inference.py', '--run_directory', run, '--data_directory', MNIST_DIR, '--evaluate',
                        '--k', '2', '--num_test', '20')
    assert result.returncode == 0, result.stderr
    metrics = evaluation_record(run)
    assert metrics['checkpoint'] == f"model_{preset['num_epoch'] - 1}"
    assert (metrics['iwae_k'], metrics['test_images']) == (2, 20) and np.isfinite(metrics['negative_iwae_nats'])
