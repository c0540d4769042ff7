"""CelebA: splits, the crops against PIL, the [-1, 1] range, the cache, bad JPEGs, and training + inference (the
FID included)."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import datasets
import fid
import process
import vae_inference
from conftest import (ROOT, TINY_CELEBA, assert_refused, celeba_config, evaluation_record, face_like_jpeg, make_celeba,
                      run_script)

@pytest.fixture
def celeba(celeba_folder):
    """The session's 40 made-up faces (never written to)."""
    return celeba_folder


def test_split_by_partition_file(celeba):
    splits = datasets.celeba_splits(celeba_config(celeba))
    assert [len(splits[s]) for s in ('train', 'validation', 'test')] == [30, 5, 5]
    assert os.path.basename(splits['validation'][0]) == '000031.jpg'
    assert os.path.basename(splits['test'][-1]) == '000040.jpg'


def test_split_by_file_number(tmp_path, monkeypatch, capsys):
    make_celeba(tmp_path, count=12, partition=None)
    monkeypatch.setattr(datasets, 'CELEBA_SPLITS', {'train': (1, 8), 'validation': (9, 10), 'test': (11, 12)})
    config = celeba_config(tmp_path)
    splits = datasets.celeba_splits(config)
    assert [os.path.basename(p) for p in splits['validation']] == ['000009.jpg', '000010.jpg']
    assert len(splits['train']) == 8 and 'warning' not in capsys.readouterr().out
    os.remove(tmp_path / '000004.jpg')
    assert '000004.jpg' not in str(datasets.celeba_splits(config)['train'])
    assert 'has 7 of the 8 train JPEGs of the official train range 000001.jpg-000008.jpg (first missing: ' \
           '000004.jpg); using those 7' in capsys.readouterr().out
    os.remove(tmp_path / '000009.jpg'), os.remove(tmp_path / '000010.jpg')
    with pytest.raises(process.UserError, match='has none of the 2 validation JPEGs .*first missing: 000009.jpg'):
        datasets.celeba_splits(config)


def test_a_subset_of_img_align_celeba_is_split_by_the_official_ranges(tmp_path, capsys):
    make_celeba(tmp_path, count=40, partition=None)  # all 40 in the official train range: no validation image
    with pytest.raises(process.UserError, match=r'has none of the 19867 validation JPEGs of the official validation '
                                                r'range 162771.jpg-182637.jpg \(first missing: 162771.jpg\); download'):
        datasets.celeba_splits(celeba_config(tmp_path))
    assert 'has 40 of the 162770 train JPEGs of the official train range 000001.jpg-162770.jpg (first missing: ' \
           '000041.jpg); using those 40' in capsys.readouterr().out


def test_a_partition_file_and_a_folder_that_differ(tmp_path, capsys):
    """Files the partition lists but the folder lacks: a warning, and the files present; files the folder holds
    but the partition does not list: a warning, and not used; a --partition_file that does not exist: refused."""
    make_celeba(tmp_path, count=40)
    with open(tmp_path / 'list_eval_partition.txt', 'a') as f:
        f.write('162771.jpg 1\n')  # listed (validation), not here
    os.rename(tmp_path / '000001.jpg', tmp_path / '202600.jpg')  # here, in no split; 000001.jpg listed, not here
    splits = datasets.celeba_splits(celeba_config(tmp_path))
    assert [len(splits[s]) for s in ('train', 'validation', 'test')] == [29, 5, 5]
    out = capsys.readouterr().out
    assert f'warning: 1 JPEGs in {tmp_path} are in no split of {tmp_path}/list_eval_partition.txt (first: ' \
           '202600.jpg); they are not used' in out
    assert 'has 29 of the 30 train JPEGs' in out and 'has 5 of the 6 validation JPEGs' in out
    assert 'first missing: 162771.jpg); using those 5' in out and 'test JPEGs' not in out
    with pytest.raises(process.UserError, match='--partition_file .*nonexistent.txt does not exist'):
        datasets.celeba_splits(celeba_config(tmp_path, '--partition_file', str(tmp_path / 'nonexistent.txt')))


REAL_CELEBA = os.path.join(ROOT, '..', 'shared', 'data', 'celeba-6k')  # 5,999 real faces, where a machine has them


@pytest.mark.skipif(not os.path.isdir(REAL_CELEBA), reason=f'no real CelebA subset at {REAL_CELEBA}: the other '
                                                          'tests make their own faces')
@pytest.mark.slow  # trains or fits: the fast tier stays under 3 minutes
def test_the_real_celeba_subset_splits_by_its_partition_and_trains(tmp_path):
    # The folder the README's CelebA commands use: a subset of img_align_celeba with its partition file.
    splits = datasets.celeba_splits(celeba_config(REAL_CELEBA))
    assert [len(splits[s]) for s in ('train', 'validation', 'test')] == [4560, 780, 659]
    run = tmp_path / 'run'
    result = run_script('vae.py', *TINY_CELEBA, '--data_directory', REAL_CELEBA, '--num_train_images', '64',
                        '--num_epoch', '1', '--run_directory', run)
    assert result.returncode == 0 and 'saved model_0' in result.stdout, result.stderr
    assert 'warning' not in result.stdout  # the partition lists exactly the files present


@pytest.mark.skipif(not os.path.isdir(REAL_CELEBA), reason=f'no real CelebA subset at {REAL_CELEBA}: the other '
                                                          'tests make their own faces')
@pytest.mark.slow  # trains or fits: the fast tier stays under 3 minutes
def test_the_committed_celeba_run_finds_its_records_from_the_readmes_commands(tmp_path):
    # The README's commands on the committed run print its kept numbers: the same weights, the same 659 test faces.
    run = tmp_path / 'faces'
    shutil.copytree(os.path.join(ROOT, 'celebA', 'results', 'faces'), run)
    result = run_script('vae_inference.py', '--run_directory', run, '--data_directory', REAL_CELEBA, '--evaluate',
                        '--k', '100')
    assert result.returncode == 0 and 'holds this evaluation' in result.stdout, result.stdout + result.stderr
    assert '8872.89 +- 6.33 nats' in result.stdout
    assert sorted(os.listdir(run / 'evaluations')) == sorted(os.listdir(os.path.join(ROOT, 'celebA', 'results',
                                                                                      'faces', 'evaluations')))


@pytest.mark.parametrize('crop', ['closecrop', 'resizecrop'])
def test_crops_match_pil_within_two_grey_levels(celeba, crop):
    config = celeba_config(celeba, '--celebA_crop', crop)
    paths = datasets.celeba_splits(config)['train'][:10]
    crops = datasets.decode_celeba_files(paths, config)
    reference = np.stack([datasets.crop_celeba_pil(path, config) for path in paths])
    assert crops.shape == reference.shape == (10, 64, 64, 3)
    assert np.abs(crops.astype(float) - reference).mean() < 2
    other = 'resizecrop' if crop == 'closecrop' else 'closecrop'
    wrong = np.stack([datasets.crop_celeba_pil(path, {**config, 'celebA_crop': other}) for path in paths])
    assert np.abs(crops.astype(float) - wrong).mean() > 10  # the comparison can tell the crops apart


def test_training_input_is_in_minus_one_to_one(celeba):
    config = celeba_config(celeba)
    data = datasets.load_dataset(config)
    with process.tf.Graph().as_default():
        training_input = datasets.input_pipeline(config, data['train'])
        with process.tf1.Session() as sess:
            sess.run(training_input.initializer, training_input.feed(0, 0))
            batch = sess.run(training_input.images)
    assert batch.shape == (8, 64, 64, 3)
    assert -1 <= batch.min() < -0.9 and 0.9 < batch.max() <= 1
    assert data['test_images'].shape == (5, 64, 64, 3) and data['grid_images'].shape == (5, 64, 64, 3)


def test_cache_is_built_once_and_rebuilt_for_another_crop_file_list_or_file(tmp_path, monkeypatch):
    folder = tmp_path / 'img_align_celeba'
    make_celeba(folder)
    cache = tmp_path / 'cache'
    config = celeba_config(folder, '--celebA_cache', 'true', '--celebA_cache_directory', str(cache))
    data = datasets.load_dataset(config)
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].startswith('train_closecrop_64x64_')
    assert data['train'].dtype == np.uint8 and data['train'].shape == (30, 64, 64, 3)
    expected = datasets.decode_celeba_files(datasets.celeba_splits(config)['train'], config)
    assert np.array_equal(data['train'], expected)
    decoded = []
    decode = datasets.decode_celeba_files
    monkeypatch.setattr(datasets, 'decode_celeba_files', lambda paths, config: decoded.extend(paths) or
                        decode(paths, config))
    assert np.array_equal(datasets.load_dataset(config)['train'], expected)
    assert len(decoded) == 5 + 5  # the test and grid images only: the training crops came from the cache
    monkeypatch.setattr(datasets, 'decode_celeba_files', decode)
    datasets.load_dataset({**config, 'celebA_crop': 'resizecrop'})
    assert len(os.listdir(cache)) == 2
    with open(folder / 'list_eval_partition.txt') as f:
        lines = f.readlines()
    with open(folder / 'list_eval_partition.txt', 'w') as f:
        f.writelines(lines[1:])  # one training file fewer
    assert len(datasets.load_dataset(config)['train']) == 29
    assert len(os.listdir(cache)) == 3
    replace_with_another_face_of_the_same_size(folder / '000002.jpg')  # the cache was keyed by names and sizes
    assert not np.array_equal(datasets.load_dataset(config)['train'], expected[1:])
    assert len(os.listdir(cache)) == 4


def replace_with_another_face_of_the_same_size(path):
    """Another valid face in path's file, byte for byte as long (a JPEG comment pads it): only its bytes differ."""
    size = os.path.getsize(path)
    face_like_jpeg(path, np.random.default_rng(99), quality=40)
    body = open(path, 'rb').read()
    padding = size - len(body) - 4  # a COM segment: FF FE, a 2-byte length (counting itself), the comment
    assert padding >= 0
    with open(path, 'wb') as f:
        f.write(body[:2] + b'\xff\xfe' + (padding + 2).to_bytes(2, 'big') + b' ' * padding + body[2:])
    assert os.path.getsize(path) == size and datasets.check_celeba_file(str(path)) is None


def write_bad(folder, name, kind, rng):
    path = os.path.join(folder, name)
    if kind == 'unreadable':
        with open(path, 'wb') as f:
            f.write(b'this is not a jpeg' * 100)
    elif kind == 'truncated':
        face_like_jpeg(path, rng)
        data = open(path, 'rb').read()
        with open(path, 'wb') as f:
            f.write(data[:len(data) // 2])
    elif kind == 'greyscale':
        face_like_jpeg(path, rng, mode='L')
    elif kind == 'wrong size':
        face_like_jpeg(path, rng, size=(200, 200))


@pytest.mark.parametrize('kind, message', [
    ('unreadable', 'cannot be read as an image'),
    ('truncated', 'is truncated (no JPEG end marker)'),
    ('greyscale', 'is L (not RGB colour)'),
    ('wrong size', 'is 200x200, not 178x218'),
])
def test_a_bad_jpeg_is_refused_by_name(tmp_path, kind, message):
    folder = tmp_path / 'img_align_celeba'
    make_celeba(folder)
    write_bad(folder, '000017.jpg', kind, np.random.default_rng(1))
    result = run_script('vae.py', *TINY_CELEBA, '--data_directory', folder,
                        '--run_directory', tmp_path / 'run')
    assert result.returncode == 1
    assert result.stderr.strip() == (f'error: {folder}/000017.jpg {message}; replace it with the original '
                                     'img_align_celeba file, or list only good files in a list_eval_partition.txt')
    assert not os.path.exists(tmp_path / 'run' / 'models' / 'model_0.index')


def test_a_jpeg_with_a_scrambled_body_but_its_end_marker_is_refused(tmp_path):
    # PIL and TensorFlow decode this file to garbage with no more than a libjpeg warning.
    folder = tmp_path / 'img_align_celeba'
    make_celeba(folder)
    path = folder / '000017.jpg'
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(2)
    data[len(data) // 3:len(data) // 3 + 200] = rng.integers(0, 255, 200, dtype=np.uint8).tobytes()  # no 0xFF
    path.write_bytes(bytes(data))
    with Image.open(path) as image:
        image.load()  # the damage PIL lets through
    result = run_script('vae.py', *TINY_CELEBA, '--data_directory', folder,
                        '--run_directory', tmp_path / 'run')
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f'error: {path} has corrupt image data (Corrupt JPEG data')
    assert len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / 'run' / 'models' / 'model_0.index')


def test_an_empty_folder_says_how_to_get_celeba(tmp_path):
    config = celeba_config(tmp_path)
    with pytest.raises(process.UserError, match=f'no JPEGs in {tmp_path}; download img_align_celeba.zip'):
        datasets.load_dataset(config)


def test_celeba_trains_and_infers_end_to_end(tmp_path, celeba, tiny_run, pristine_runs):
    run = tiny_run('celebA')  # trained by vae.py on the session's made-up faces
    args = [*TINY_CELEBA, '--data_directory', celeba, '--run_directory', run]
    training_output = pristine_runs.output('celebA')
    assert 'epoch   1' in training_output and 'test negative ELBO' in training_output
    with Image.open(run / 'op-gen' / 'epoch_0001.png') as grid:
        assert grid.size == (5 * 64 * 2, 5 * 64 * 2 + 16) and grid.mode == 'RGB'
    with Image.open(run / 'op-real' / 'epoch_0000.png') as grid:
        real = np.asarray(grid)[16:]
    config = celeba_config(celeba)
    first = datasets.crop_celeba_pil(datasets.celeba_splits(config)['validation'][0], config)
    upscaled = np.asarray(Image.fromarray(first).resize((128, 128), Image.NEAREST))
    assert np.abs(real[:128, :128].astype(float) - upscaled).mean() < 2  # [-1, 1] mapped back to [0, 255]
    result = run_script('vae_inference.py', *args, '--evaluate', '--k', '5')
    assert result.returncode == 0, result.stderr
    metrics = evaluation_record(run)
    assert metrics['test_images'] == 5 and metrics['iwae_k'] == 5 and metrics['checkpoint'] == 'model_1'
    assert metrics['decoder'].startswith('gaussian, fixed variance')
    # The same bound on the same 5 test images and checkpoint, by training's one-sample estimate at its last save.
    trained = float(re.findall(r'saved model_1; test negative ELBO ([\d.]+) nats', training_output)[0])
    assert abs(metrics['negative_elbo_nats'] - trained) < 0.02 * trained, (metrics, trained)
    assert 7 < metrics['negative_elbo_bits_per_dim'] < 16  # discretised 8-bit pixels on [-1, 1]: 7 bits + the rest
    # The run folder describes itself: its dataset, model, data folder and batch size come from its config.json
    # (config.py's batch_size 128 is more than the 30 training images, and inference does not care).
    result = run_script('vae_inference.py', '--run_directory', run)
    assert result.returncode == 0, result.stderr
    with Image.open(run / 'generations_model_1.png') as image:
        assert image.size == (10 * 64 * 2, 10 * 64 * 2 + 16)
    with Image.open(run / 'generations.gif') as gif:
        assert gif.n_frames == 2
    result = run_script('vae_inference.py', '--run_directory', run, '--projector')
    assert result.returncode == 0, result.stderr
    assert (run / 'logs' / 'projector_sprite_model_1.png').exists()
    assert not list((run / 'logs').glob('projector_labels*'))


def test_a_celeba_runs_own_keys_need_no_dataset_flag(tiny_run):
    # The run folder knows its preset: --num_test_images (a CelebA key) is an option without --dataset celebA.
    run = tiny_run('celebA')
    result = run_script('vae_inference.py', '--run_directory', run, '--num_test_images', '3', '--evaluate', '--k', '2')
    assert result.returncode == 0, result.stderr
    assert evaluation_record(run)['test_images'] == 3


def test_a_damaged_training_jpeg_is_refused_by_name_when_a_sampler_is_fitted(tmp_path, tiny_run, celeba_folder):
    # Inference decodes the training faces for the gmm fit only: they are checked there as training checks them.
    folder = tmp_path / 'img_align_celeba'
    shutil.copytree(celeba_folder, folder)
    write_bad(folder, '000005.jpg', 'truncated', np.random.default_rng(1))
    run = tiny_run('celebA')
    result = run_script('vae_inference.py', '--run_directory', run, '--data_directory', folder, '--sampler', 'gmm')
    assert result.returncode == 1 and result.stderr.startswith(f'error: {folder}/000005.jpg is truncated'), \
        result.stderr
    assert not list(run.glob('generations*'))
    # The second stage's key reads the training files' bytes: a dangling link among them is refused by name too
    # (it was a FileNotFoundError traceback).
    os.remove(folder / '000005.jpg')
    os.symlink(folder / 'gone.jpg', folder / '000005.jpg')
    result = run_script('vae_inference.py', '--run_directory', run, '--data_directory', folder, '--sampler',
                        'two_stage', '--two_stage_epochs', '1')
    assert_refused(result, f'{folder}/000005.jpg cannot be read as an image')
    assert not list(run.glob('generations*')) and not (run / 'two_stage').exists()


@pytest.mark.slow  # trains or fits: the fast tier stays under 3 minutes
def test_a_celeba_second_stage_is_kept_per_training_files_and_their_bytes(tmp_path, tiny_run, celeba_folder):
    # The folder may hold other faces on a later call (a subset of img_align_celeba): a fit to other files, even as
    # many, is fitted again and kept beside the first, never read back in its place.
    folder = tmp_path / 'img_align_celeba'
    shutil.copytree(celeba_folder, folder)
    run = tiny_run('celebA')
    args = ['--run_directory', run, '--data_directory', folder, '--sampler', 'two_stage', '--two_stage_epochs', '1']
    for _ in range(2):
        assert run_script('vae_inference.py', *args).returncode == 0
    [kept] = os.listdir(run / 'two_stage')
    os.rename(folder / '000005.jpg', folder / '000041.jpg')  # 30 training faces still, one of them another file
    partition = (folder / 'list_eval_partition.txt').read_text().replace('000005.jpg 0\n', '') + '000041.jpg 0\n'
    (folder / 'list_eval_partition.txt').write_text(partition)
    result = run_script('vae_inference.py', *args)
    assert result.returncode == 0 and 'fitted the second stage' in result.stdout, result.stderr
    assert len(os.listdir(run / 'two_stage')) == 2 and kept in os.listdir(run / 'two_stage')
    replace_with_another_face_of_the_same_size(folder / '000006.jpg')  # the same names and sizes, another face
    result = run_script('vae_inference.py', *args)
    assert result.returncode == 0 and 'fitted the second stage' in result.stdout, result.stderr
    assert len(os.listdir(run / 'two_stage')) == 3


@pytest.mark.slow
def test_the_fid_of_a_celeba_run_scores_its_test_split(tmp_path, tiny_run):
    # The FID takes the same path as MNIST's: the test split's 5 faces, their reconstructions and two_stage samples.
    run = tiny_run('celebA')
    result = run_script('vae_inference.py', '--run_directory', run, '--fid', '--sampler', 'two_stage',
                        '--two_stage_epochs', '1', '--fid_samples', '6', '--fid_cache_directory', tmp_path / 'cache',
                        '--fid_weights', fid.weights_path(os.path.join(ROOT, '.cache', 'fid')))
    assert result.returncode == 0, result.stderr
    records = {r['scored']: r for r in vae_inference.evaluation_records(run).values() if 'fid' in r}
    assert {source: (r['count'], r['test_images'], r['decoded']) for source, r in records.items()} == \
        {'reconstructions': (5, 5, 'the mean'), 'two_stage': (6, 5, 'the mean')}
    assert all(np.isfinite(r['fid']) and r['fid'] > 0 for r in records.values())
    [statistics] = os.listdir(tmp_path / 'cache')
    assert statistics.startswith('statistics-celebA-5images_')


@pytest.mark.slow
@pytest.mark.process  # the peak memory of a process of its own
def test_evaluating_the_full_size_face_model_stays_within_bounded_memory(celeba, tmp_path):
    # The shipped CelebA architecture (21 M weights): k=400 samples of 4 images are 1,600 decoder passes of
    # 64x64x3, about 10 GB if run in one session.run; the evaluation splits them by bytes, not by count.
    run = tmp_path / 'run'
    args = ['--dataset', 'celebA', '--data_directory', celeba, '--batch_size', '8', '--num_epoch', '1',
            '--num_test_images', '4', '--run_directory', run]
    assert run_script('vae.py', *args).returncode == 0
    measure = ('import resource, runpy, sys\n'
               'sys.argv = sys.argv[1:]\n'
               'try:\n'
               '    runpy.run_path(sys.argv[0], run_name="__main__")\n'
               'finally:\n'
               '    print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n')
    result = subprocess.run([sys.executable, '-c', measure, os.path.join(ROOT, 'vae_inference.py'), *map(str, args),
                             '--evaluate', '--k', '400'], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    metrics = evaluation_record(run)
    assert metrics['test_images'] == 4 and metrics['iwae_k'] == 400
    assert np.isfinite(metrics['negative_iwae_nats']) and metrics['negative_iwae_nats'] <= metrics['negative_elbo_nats']
    peak_gib = int(result.stdout.split('peak_kib')[-1]) / 2 ** 20
    assert peak_gib < 4, f'{peak_gib:.1f} GiB'
