"""A trained VAE used outside this repository: vae_inference.py --saved_model (the signatures give
vae_inference's numbers, in plain TensorFlow without the repository on the path; bad destinations; the committed
reference run's SavedModel), and runs compared in TensorBoard's HParams dashboard (hparams.py)."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

import command_line
import config_keys
import datasets
import hparams
import process
import run_folder
import saved_model
import vae_inference
from conftest import BERNOULLI, MNIST_DIR, ROOT, assert_refused, run_script, snapshot

tf, tf1 = process.tf, process.tf1

COMMITTED = os.path.join(ROOT, 'MNIST', 'results', 'bernoulli')


@pytest.fixture
def trained(tiny_run):
    """A copy of the tiny MNIST_bernoulli run: model_0 (the ELBO) and model_1 (the IWAE bound of 2 samples)."""
    return tiny_run('bernoulli')


def restored(run):
    config, _ = command_line.parse_command_line(['--run_directory', str(run), '--data_directory', MNIST_DIR],
                                                from_run=True)
    sess, outputs, epoch = vae_inference.restore(config)
    return config, sess, outputs, epoch


def first_test_images(config, count):
    return datasets.evaluation_images(config, datasets.load_mnist(MNIST_DIR)['test_images'][:count])


# Run in `python -I` from a folder outside the repository: no vae.py anywhere on sys.path, only TensorFlow.
PLAIN_TENSORFLOW = r'''
import json, os, sys
import numpy as np
import tensorflow as tf
folder, inputs, outputs = sys.argv[1:]
assert not any(os.path.exists(os.path.join(path or os.getcwd(), 'vae.py')) for path in sys.path), sys.path
model = tf.saved_model.load(folder)
x = np.load(inputs)
signatures = model.signatures
found = {name: {'inputs': {key: [spec.dtype.name, spec.shape.as_list()]
                           for key, spec in f.structured_input_signature[1].items()},
                'outputs': {key: [spec.dtype.name, spec.shape.as_list()] for key, spec in f.structured_outputs.items()}}
         for name, f in signatures.items()}
seed = lambda *values: tf.constant(values, tf.int64)
encoded = signatures['encode'](images=x['images'])
sampled = signatures['sample'](count=tf.constant(7), seed=seed(3, 4))
bound = signatures['importance_weighted_bound'](images=x['images'], k=tf.constant(int(x['k'])), seed=seed(0, 0))
np.savez(outputs, z_mean=encoded['z_mean'], z_std=encoded['z_std'],
         reconstruct=signatures['reconstruct'](images=x['images'])['images'],
         decode=signatures['decode'](z=x['z'])['images'], sample_z=sampled['z'], sample_images=sampled['images'],
         again_z=signatures['sample'](count=tf.constant(7), seed=seed(3, 4))['z'],
         other_z=signatures['sample'](count=tf.constant(7), seed=seed(3, 5))['z'],
         bound=bound['log_px_bound_nats'], elbo=bound['elbo_nats'])
refused = {}  # what each bad call raised: [type, message]
for case, call in {'k 0': lambda: signatures['importance_weighted_bound'](images=x['images'], k=tf.constant(0),
                                                                          seed=seed(0, 0)),
                   'count -1': lambda: signatures['sample'](count=tf.constant(-1), seed=seed(0, 0)),
                   'images 32x32': lambda: signatures['encode'](images=np.zeros((2, 32, 32, 1), np.float32))}.items():
    try:
        refused[case] = ['returned', str({key: value.numpy().tolist() for key, value in call().items()})]
    except (tf.errors.InvalidArgumentError, TypeError) as error:
        refused[case] = [type(error).__name__, str(error)]
print(json.dumps(refused))
print(json.dumps(found))
print('repository modules loaded:', sorted({'vae', 'process', 'config_keys', 'run_folder', 'command_line',
                                            'pictures', 'saved_model'} & set(sys.modules)))
'''


def expected_signatures(z_dim, image):
    """The signatures' inputs and outputs: [dtype, shape] by key."""
    images, latents, seed = ['float32', [None, *image]], ['float32', [None, z_dim]], ['int64', [2]]
    return {
        'encode': {'inputs': {'images': images}, 'outputs': {'z_mean': latents, 'z_std': latents}},
        'decode': {'inputs': {'z': latents}, 'outputs': {'images': images}},
        'reconstruct': {'inputs': {'images': images}, 'outputs': {'images': images}},
        'sample': {'inputs': {'count': ['int32', []], 'seed': seed}, 'outputs': {'z': latents, 'images': images}},
        'importance_weighted_bound': {'inputs': {'images': images, 'k': ['int32', []], 'seed': seed},
                                      'outputs': {'log_px_bound_nats': ['float64', [None]],
                                                  'elbo_nats': ['float64', [None]]}},
    }


def assert_vae_inferences_numbers(sess, outputs, config, images, z, k, found):
    """The SavedModel's outputs (found: z_mean, z_std, reconstruct, decode, sample_z and sample_images, bound and
    elbo of seed [0, 0]) are vae_inference's on the same images, latents and draws, to float32 rounding."""
    close = lambda got, wanted: np.testing.assert_allclose(got, wanted, rtol=1e-5, atol=1e-5)
    z_mean, z_std = sess.run([outputs.z_mean, outputs.z_std], {outputs.images: images})
    close(found['z_mean'], z_mean)
    close(found['z_std'], z_std)
    close(found['reconstruct'], vae_inference.reconstruct(sess, outputs, images))
    close(found['decode'], vae_inference.generate(sess, outputs, z))
    close(found['sample_images'], vae_inference.generate(sess, outputs, found['sample_z']))
    elbo, iwae = vae_inference.importance_weighted_bound(sess, outputs, config, images, k)
    close(found['bound'], iwae)
    close(found['elbo'], elbo)


@pytest.mark.slow
@pytest.mark.process  # the SavedModel in a plain-TensorFlow child, without the repository
def test_the_saved_model_gives_vae_inferences_numbers_in_plain_tensorflow(trained, tmp_path):
    folder = tmp_path / 'exported'
    result = run_script('vae_inference.py', '--run_directory', trained, '--saved_model', folder)
    assert result.returncode == 0, result.stderr
    assert f'wrote {folder}: model_1 as a SavedModel' in result.stdout and result.stderr == ''
    assert json.load(open(folder / 'assets.extra' / 'config.json')) == json.load(open(trained / 'config.json'))
    assert 'importance_weighted_bound:' in (folder / 'assets.extra' / 'signatures.txt').read_text()

    config, sess, outputs, epoch = restored(trained)
    images, k = first_test_images(config, 10), 9
    z = np.random.RandomState(0).standard_normal((6, config['z_dim'])).astype(np.float32)
    np.savez(tmp_path / 'inputs.npz', images=images, z=z, k=k)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    child = subprocess.run([sys.executable, '-I', '-c', PLAIN_TENSORFLOW, folder, tmp_path / 'inputs.npz',
                            tmp_path / 'outputs.npz'], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    lines = child.stdout.strip().splitlines()
    assert json.loads(lines[-2]) == expected_signatures(config['z_dim'], [28, 28, 1])
    assert lines[-1] == 'repository modules loaded: []'
    # Values the placeholders' shapes cannot hold out are refused by the signature with the rule, never a NaN.
    refused = json.loads(lines[-3])
    assert refused['k 0'][0] == 'InvalidArgumentError' and 'k must be at least 1' in refused['k 0'][1], refused
    assert refused['count -1'][0] == 'InvalidArgumentError' and 'count must be at least 0' in refused['count -1'][1]
    assert refused['images 32x32'][0] == 'TypeError', refused

    found = dict(np.load(tmp_path / 'outputs.npz'))
    # One run of all k samples of the 10 images: vae_inference seeds it [0, 0] (its first image and sample).
    assert config_keys.decodes_per_run(config, vae_inference.IWAE_MEMORY) >= k * len(images)
    with sess:
        assert_vae_inferences_numbers(sess, outputs, config, images, z, k, found)
    assert np.all(found['bound'] >= found['elbo'] - 1e-9)
    # The prior draws are N(0, I) of the seed alone: the same seed the same z, another seed others.
    assert found['sample_z'].shape == (7, config['z_dim']) and np.array_equal(found['sample_z'], found['again_z'])
    assert not np.allclose(found['sample_z'], found['other_z'])

    cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
    shown = subprocess.run([cli, 'show', '--dir', folder, '--all'], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    for name in saved_model.SIGNATURES:
        assert f"signature_def['{name}']" in shown.stdout
    assert 'shape: (-1, 28, 28, 1)\n        name: decode_images:0' in shown.stdout


def test_a_bad_saved_model_destination_is_one_line_and_nothing_is_written(trained, tmp_path, monkeypatch):
    before = snapshot(trained)
    full = tmp_path / 'full'
    full.mkdir()
    (full / 'other.txt').write_text('kept')
    result = run_script('vae_inference.py', '--run_directory', trained, '--saved_model', full)
    assert_refused(result, f'{full} is a non-empty folder; choose a new or empty folder', trained, before)
    a_file = tmp_path / 'a_file'
    a_file.write_text('kept')
    os.symlink(tmp_path / 'nowhere', tmp_path / 'link')
    refusals = [(full, 'is a non-empty folder'), (a_file, 'is a file'), (tmp_path / 'link', 'is a symbolic link'),
                (a_file / 'saved_model', 'nothing was written')]  # a parent that is a file
    if os.path.isdir('/sys'):  # sysfs: no one creates folders there, root included (chmod does not stop root)
        refusals.append(('/sys/vae_saved_model', 'nothing was written'))
    for destination, message in refusals:
        with pytest.raises(process.UserError, match=f'{re.escape(str(destination))} .*{message}'):
            vae_inference.main(['--run_directory', str(trained), '--saved_model', str(destination)])
    assert not os.path.lexists('/sys/vae_saved_model')
    assert (full / 'other.txt').read_text() == 'kept' and a_file.read_text() == 'kept'
    assert sorted(os.listdir(tmp_path)) == ['a_file', 'full', 'link'] and os.listdir(full) == ['other.txt']

    # A full disk or Ctrl-C while the builder writes: no folder, no temporary beside it; then a retry goes through.
    config, _ = command_line.parse_command_line(['--run_directory', str(trained)], from_run=True)
    prefix = run_folder.list_checkpoints(trained / 'models')[1]
    target = tmp_path / 'new'
    for fault, raised in ((OSError(28, 'No space left on device'), process.UserError),
                          (KeyboardInterrupt(), KeyboardInterrupt)):
        def save(self, *args, **kwargs):
            raise fault
        monkeypatch.setattr(tf1.saved_model.Builder, 'save', save)
        with pytest.raises(raised):
            saved_model.write_saved_model(config, 1, prefix, str(target))
        assert sorted(os.listdir(tmp_path)) == ['a_file', 'full', 'link']
    monkeypatch.undo()
    saved_model.write_saved_model(config, 1, prefix, str(target))
    assert (target / 'saved_model.pb').exists() and snapshot(trained) == before


def test_a_destination_tensorflow_reads_as_a_pattern_or_beside_other_work_is_refused(trained, tmp_path):
    # '/x/sm[1]' would be written, then globbed by tf.saved_model.load; --saved_model returned before --evaluate.
    before = snapshot(trained)
    for flags, message in ((['--saved_model', tmp_path / 'sm[1]'], '--saved_model must be a path without *, ?, ['),
                           (['--export', tmp_path / 'exp*'], '--export must be a path without *, ?, ['),
                           (['--saved_model', tmp_path / 'sm', '--evaluate', '--fid'],
                            '--saved_model --evaluate --fid cannot go together'),
                           (['--saved_model', tmp_path / 'sm', '--export', tmp_path / 'e'], 'cannot go together')):
        assert_refused(run_script('vae_inference.py', '--run_directory', trained, *flags), message, trained, before)
    assert os.listdir(tmp_path) == []


def session_starts(log_directory):
    """[(events file name, {hparam: value})] of the hparams session starts in a log folder."""
    from tensorboard.plugins.hparams import metadata
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(str(log_directory)), 'events.out.tfevents.*'))):
        for event in tf1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME:
                    info = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                    found.append((os.path.basename(path), {key: getattr(v, v.WhichOneof('kind'))
                                                           for key, v in info.hparams.items()}))
    return found


def scalars(log_directory, tag):
    """{step: value} of one scalar tag in a log folder."""
    steps, values = vae_inference.read_training_curves(log_directory).get(tag, ([], []))
    return dict(zip(np.asarray(steps).tolist(), np.asarray(values).tolist()))


def assert_hparams_are_config_json(run):
    saved = json.load(open(run / 'config.json'))
    (name, values), = session_starts(run / 'logs')  # one per run, replaced at each start of training
    assert name == hparams.SESSION_START_FILE
    kept = {key for key in saved
            if key in config_keys.KEY_TYPES and key not in config_keys.PROCESS_KEYS + config_keys.LOCATION_KEYS}
    assert set(values) == kept | {'preset'}
    for key, value in values.items():
        wanted = saved[key]
        assert value == (config_keys.flag_value(wanted) if isinstance(wanted, list) else wanted), key
        assert type(value) is (bool if isinstance(wanted, bool) else str if isinstance(wanted, (str, list)) else
                               float), key
    return values


def test_a_runs_events_hold_its_config_json_as_hparams_and_its_evaluations_as_scalars(trained, tmp_path):
    values = assert_hparams_are_config_json(trained)
    # The whole run's settings, though its first part trained the one-sample ELBO.
    assert (values['preset'], values['objective'], values['train_samples'], values['encoder_filters'],
            values['binarize']) == ('MNIST_bernoulli', 'iwae', 2, '4,8,8', True)
    assert 'run_directory' not in values and 'num_threads' not in values and 'data_directory' not in values

    # A resume that changes settings writes them again: config.json's values, once.
    run = tmp_path / 'resumed'
    shutil.copytree(trained, run)
    result = run_script('vae.py', '--run_directory', run, '--num_epoch', '3', '--learning_rate', '0.001')
    assert result.returncode == 0, result.stderr
    values = assert_hparams_are_config_json(run)
    assert (values['num_epoch'], values['learning_rate']) == (3, 0.001)

    # --evaluate's bound at the checkpoint's global step (model_2 ends epoch 2: step 30), beside the test ELBO.
    result = run_script('vae_inference.py', '--run_directory', run, '--evaluate', '--k', '3', '--num_test', '20')
    assert result.returncode == 0, result.stderr
    record, = vae_inference.evaluation_records(run).values()
    assert scalars(run / 'logs', 'negative_iwae_nats') == {30: pytest.approx(record['negative_iwae_nats'])}
    assert 30 in scalars(run / 'logs', 'test_negative_elbo_nats')


def test_fid_records_are_scalars_too(trained, tmp_path, monkeypatch):
    import fid
    run = tmp_path / 'run'
    shutil.copytree(trained, run)
    # A stand-in for Inception (test_fid.py checks the real one): 2048 features from each image's pixels.
    monkeypatch.setattr(fid, 'load_weights', lambda path: None)
    monkeypatch.setattr(fid, 'weights_path', lambda *args: None)
    monkeypatch.setattr(fid, 'feature_extractor', lambda weights, progress: lambda pixels: np.tile(
        pixels.reshape(len(pixels), -1)[:, :16], 128).astype(np.float32))
    monkeypatch.setattr(fid, 'frechet_distance', lambda mu1, sigma1, mu2, sigma2: float(np.abs(mu1 - mu2).sum()))
    config, sess, outputs, epoch = restored(run)
    config = {**config, 'fid_cache_directory': str(tmp_path / 'cache')}
    with sess:
        vae_inference.write_fid(sess, outputs, config, datasets.load_dataset(config, training=False), epoch,
                                run_folder.list_checkpoints(run / 'models')[epoch],
                                {'num_test': 10, 'fid_weights': '', 'sampler': 'prior', 'fid_samples': 12,
                                 'refine_steps': 0})
    records = {r['scored']: r['fid'] for r in vae_inference.evaluation_records(run).values()}
    for source in ('reconstructions', 'prior'):
        assert scalars(run / 'logs', f'fid/{source}') == {20: pytest.approx(records[source])}


@pytest.mark.slow
@pytest.mark.process  # a live TensorBoard
def test_the_dashboard_lists_the_runs_with_their_settings_and_metrics(trained, tmp_path):
    """`tensorboard --logdir` over a folder of run folders, asked what its HParams tab shows."""
    runs = tmp_path / 'runs'
    shutil.copytree(trained, runs / 'a')
    assert run_script('vae.py', *BERNOULLI, '--z_dim', '3', '--num_epoch', '1', '--run_directory',
                      runs / 'b').returncode == 0
    assert run_script('vae_inference.py', '--run_directory', runs / 'a', '--evaluate', '--k', '2', '--num_test',
                      '10').returncode == 0
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), 'tensorboard'), '--logdir', runs,
                               '--port', '0'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        address = None
        for line in server.stderr:
            address = re.search(r'at (http://\S+/) \(Press CTRL\+C', line)
            if address:
                break
        assert address, 'tensorboard did not start'
        ask = lambda route, request: json.load(urllib.request.urlopen(urllib.request.Request(
            address.group(1) + 'data/plugin/hparams/' + route, json.dumps(request).encode(),
            {'Content-Type': 'application/json'}), timeout=60))
        deadline = time.monotonic() + 120
        while True:  # until both runs are read
            experiment = ask('experiment', {'experimentName': ''})
            groups = ask('session_groups', {'experimentName': '', 'startIndex': 0, 'sliceSize': 10,
                                            'allowedStatuses': ['STATUS_UNKNOWN'],
                                            'colParams': [{'hparam': 'z_dim'}]})['sessionGroups']
            tags = [{value['name']['tag'] for value in group['metricValues']} for group in groups]
            if len(tags) == 2 and all('test_negative_elbo_nats' in found for found in tags) and \
                    any('negative_iwae_nats' in found for found in tags) or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=60)
    hparam_infos = {info['name']: info for info in experiment['hparamInfos']}
    # The columns shown first are the settings that differ between the runs; every scalar is a metric column.
    assert [name for name, info in hparam_infos.items() if info.get('differs')] == ['num_epoch', 'z_dim']
    assert list(hparam_infos)[:2] == ['num_epoch', 'z_dim']
    metrics = {info['name']['tag'] for info in experiment['metricInfos']}
    assert {'test_negative_elbo_nats', 'negative_iwae_nats', 'loss'} <= metrics
    by_run = {group['name']: group for group in groups}
    assert sorted(by_run) == ['a/logs', 'b/logs']
    assert (by_run['a/logs']['hparams']['z_dim'], by_run['b/logs']['hparams']['z_dim']) == (4, 3)
    record, = vae_inference.evaluation_records(runs / 'a').values()
    found = {value['name']['tag']: value['value'] for value in by_run['a/logs']['metricValues']}
    assert found['negative_iwae_nats'] == pytest.approx(record['negative_iwae_nats'])
    assert 'negative_iwae_nats' not in {value['name']['tag'] for value in by_run['b/logs']['metricValues']}


def test_the_committed_saved_model_is_the_committed_checkpoint(tmp_path):
    """MNIST/results/bernoulli/saved_model is what --saved_model writes from model_129 (byte for byte), and gives
    its numbers."""
    folder = os.path.join(COMMITTED, 'saved_model')
    config, sess, outputs, epoch = restored(COMMITTED)
    assert epoch == 129
    rewritten = tmp_path / 'saved_model'
    saved_model.write_saved_model(config, epoch, run_folder.list_checkpoints(os.path.join(COMMITTED, 'models'))[epoch],
                                  str(rewritten))
    files = sorted(os.path.relpath(path, rewritten) for path in glob.glob(f'{rewritten}/**', recursive=True)
                   if os.path.isfile(path))
    assert files == sorted(os.path.relpath(path, folder) for path in glob.glob(f'{folder}/**', recursive=True)
                           if os.path.isfile(path))
    for name in files:
        with open(rewritten / name, 'rb') as new, open(os.path.join(folder, name), 'rb') as committed:
            assert new.read() == committed.read(), f'{name} differs: write it again with python vae_inference.py ' \
                '--run_directory MNIST/results/bernoulli --saved_model MNIST/results/bernoulli/saved_model'

    images, k = first_test_images(config, 20), 5
    z = np.random.RandomState(1).standard_normal((8, config['z_dim'])).astype(np.float32)
    with tf.Graph().as_default() as graph, tf1.Session(graph=graph) as loaded:
        signatures = tf1.saved_model.loader.load(loaded, [tf.saved_model.SERVING], folder).signature_def

        def call(name, **feeds):
            signature = signatures[name]
            return loaded.run({key: info.name for key, info in signature.outputs.items()},
                              {signature.inputs[key].name: value for key, value in feeds.items()})
        encoded, sampled = call('encode', images=images), call('sample', count=8, seed=[5, 6])
        bound = call('importance_weighted_bound', images=images, k=k, seed=[0, 0])
        found = {'z_mean': encoded['z_mean'], 'z_std': encoded['z_std'],
                 'reconstruct': call('reconstruct', images=images)['images'], 'decode': call('decode', z=z)['images'],
                 'sample_z': sampled['z'], 'sample_images': sampled['images'],
                 'bound': bound['log_px_bound_nats'], 'elbo': bound['elbo_nats']}
    with sess:
        assert_vae_inferences_numbers(sess, outputs, config, images, z, k, found)


def test_metrics_that_cannot_be_written_are_a_warning_and_the_record_stays(tmp_path, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a run folder')
    config = {'run_directory': str(blocker), 'log_directory': 'logs', 'steps_per_epoch': 10}
    hparams.write_metrics(config, 1, str(tmp_path / 'weights_only'), {'negative_iwae_nats': 90.5})
    assert f'warning: cannot write {blocker}/logs/events.out.tfevents.' in capsys.readouterr().out
    assert blocker.read_text() == 'not a run folder' and os.listdir(tmp_path) == ['a_file']
