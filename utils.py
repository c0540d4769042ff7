"""Command line, data loading and image writing shared by vae.py, vae_inference.py and the tests."""
import contextlib
import copy
import glob
import gzip
import hashlib
import json
import os
import re
import socket
import sys
import urllib.request

import numpy as np
from PIL import Image, ImageDraw

import config as config_module


@contextlib.contextmanager
def silence_stderr():
    """Send file descriptor 2 to /dev/null for a while: TensorFlow's C++ start-up notices (oneDNN, CPU
    features) ignore TF_CPP_MIN_LOG_LEVEL and would bury a one-line error. Python exceptions still show."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


class UserError(Exception):
    """A problem the user can fix; the scripts print it as one line and exit non-zero."""


def exit_on_user_error(main):
    """Run main(); a UserError becomes `error: ...` on stderr and exit status 1, Ctrl-C a line and 130."""
    try:
        main()
    except UserError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # before training started (training saves a checkpoint and exits by itself)
        print('interrupted; nothing was saved', file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------- command line

def _parse_value(key, text, default):
    """Convert a command-line string to the type of the config default."""
    def convert(text, kind):
        if kind is bool:
            if text.lower() in ('1', 'true', 'yes', 'on'):
                return True
            if text.lower() in ('0', 'false', 'no', 'off'):
                return False
            raise ValueError
        return kind(text)

    try:
        if isinstance(default, list):
            kind = type(default[0]) if default else str
            return [convert(item, kind) for item in text.split(',') if item != '']
        return convert(text, type(default))
    except ValueError:
        example = ','.join(str(v) for v in default) if isinstance(default, list) else default
        raise UserError(f'--{key} {text!r} is not a valid {type(default).__name__} '
                        f'(the default is {example}); pass a value like that')


def parse_command_line(argv, flags=()):
    """Parse `--dataset NAME`, the script's own `flags` and `--KEY VALUE` config overrides.

    flags maps a flag name to its default (None for a switch without a value, else typed like the default).
    Returns (config, options): a copy of the dataset's config dict with the overrides applied, and a dict of
    the script's flags.
    """
    flags = dict(flags)
    options = {name: (False if default is None else default) for name, default in flags.items()}
    dataset = config_module.dataset
    overrides = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith('--'):
            raise UserError(f'unexpected argument {arg!r}; options look like --KEY VALUE')
        name, _, value = arg[2:].partition('=')
        if name in flags and flags[name] is None:
            if value:
                raise UserError(f'--{name} takes no value')
            options[name] = True
            continue
        if not value:
            if not args:
                raise UserError(f'--{name} needs a value')
            value = args.pop(0)
        if name == 'dataset':
            dataset = value
        elif name in flags:
            options[name] = _parse_value(name, value, flags[name])
        else:
            overrides.append((name, value))

    if dataset not in config_module.configs:
        raise UserError(f'unknown dataset {dataset!r}; choose one of {", ".join(config_module.configs)} '
                        f'(config.py)')
    config = copy.deepcopy(config_module.configs[dataset])
    for key, value in overrides:
        if key not in config:
            known = ' '.join(f'--{k}' for k in config)
            raise UserError(f'unknown option --{key} for dataset {dataset}; script flags: '
                            f'{" ".join("--" + f for f in flags) or "none"}; config keys: {known}')
        config[key] = _parse_value(key, value, config[key])
    check_config(config)
    return config, options


def check_config(config):
    """Reject values that cannot train, with the key to fix."""
    for key in ('z_dim', 'batch_size', 'num_epoch', 'image_height', 'image_width', 'image_channels',
                'kernel_size', 'save_every', 'summary_every'):
        if config[key] <= 0:
            raise UserError(f'{key} must be positive, got {config[key]}; fix it in config.py or with --{key}')
    for key in ('learning_rate', 'init_stddev'):
        if not config[key] > 0:
            raise UserError(f'{key} must be positive, got {config[key]}; fix it in config.py or with --{key}')
    if config['kl_weight'] < 0:
        raise UserError(f'kl_weight must be >= 0, got {config["kl_weight"]}; fix it with --kl_weight')
    choices = {'likelihood': ('gaussian', 'gaussian_learned', 'bernoulli'), 'decoder_variance': ('pixel', 'global'),
               'output_head': ('dense_sigmoid', 'conv_tanh')}
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise UserError(f'{key} must be one of {", ".join(allowed)}, got {config[key]!r}; fix it with --{key}')
    if not config['decoder_min_variance'] > 0:
        raise UserError(f'decoder_min_variance must be positive, got {config["decoder_min_variance"]}')
    if not 0 <= config['bn_momentum'] < 1:
        raise UserError(f'bn_momentum must be in [0, 1), got {config["bn_momentum"]}')
    if len(config['encoder_filters']) != len(config['encoder_strides']):
        raise UserError('encoder_filters and encoder_strides need the same length, got '
                        f'{config["encoder_filters"]} and {config["encoder_strides"]}')
    if len(config['decoder_filters']) != len(config['decoder_strides']):
        raise UserError('decoder_filters and decoder_strides need the same length, got '
                        f'{config["decoder_filters"]} and {config["decoder_strides"]}')
    layers = config['encoder_filters'] + config['decoder_filters'] + config['encoder_strides'] + \
        config['decoder_strides']
    if not layers or min(layers) <= 0:
        raise UserError('encoder/decoder filters and strides must be positive')
    if config['output_head'] == 'conv_tanh' and config['decoder_filters'][-1] != config['image_channels']:
        raise UserError(f'with output_head conv_tanh the last of decoder_filters is the image: it must be '
                        f'image_channels={config["image_channels"]}, got {config["decoder_filters"][-1]}')
    if config['likelihood'] == 'bernoulli' and config['output_head'] != 'dense_sigmoid':
        raise UserError('likelihood bernoulli needs output_head dense_sigmoid (pixel probabilities in [0, 1])')
    if config['num_train_images'] < 0:
        raise UserError(f'num_train_images must be >= 0 (0 = all), got {config["num_train_images"]}')
    if config['num_clones'] < 1 or config['batch_size'] % config['num_clones']:
        raise UserError(f'num_clones must be >= 1 and divide batch_size {config["batch_size"]}, got '
                        f'{config["num_clones"]}; fix --num_clones or --batch_size')


# ---------------------------------------------------------------- cluster

def free_ports(count):
    """count TCP ports on 127.0.0.1 that were free a moment ago (for loopback clusters: tests, benchmark)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cluster_from_config(config):
    """{'ps': [host:port, ...], 'worker': [...]} for a multi-process run, or None for one process.

    TF_CONFIG (the standard {"cluster": {...}, "task": {"type": ..., "index": ...}} variable), when set, gives the
    cluster and this process's job and task, and overrides those config keys; otherwise ps_hosts and worker_hosts
    do, and must list num_ps_tasks and worker_replicas addresses.
    """
    if os.environ.get('TF_CONFIG'):
        try:
            tf_config = json.loads(os.environ['TF_CONFIG'])
            cluster = {job: list(tf_config['cluster'].get(job, [])) for job in ('ps', 'worker')}
            config['job_name'], config['task'] = tf_config['task']['type'], int(tf_config['task']['index'])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UserError(f'TF_CONFIG is not a cluster ({type(error).__name__}: {error}); set it like '
                            '{"cluster": {"ps": ["host:port"], "worker": ["host:port", ...]}, '
                            '"task": {"type": "worker", "index": 0}}')
        config['ps_hosts'], config['worker_hosts'] = cluster['ps'], cluster['worker']
        config['num_ps_tasks'], config['worker_replicas'] = len(cluster['ps']), len(cluster['worker'])
    if config['worker_replicas'] < 1 or config['num_ps_tasks'] < 0:
        raise UserError(f'worker_replicas must be >= 1 and num_ps_tasks >= 0, got {config["worker_replicas"]} and '
                        f'{config["num_ps_tasks"]}')
    if config['worker_replicas'] == 1 and config['num_ps_tasks'] == 0:
        return None
    if config['num_ps_tasks'] == 0:
        raise UserError(f'worker_replicas={config["worker_replicas"]} share their variables through parameter '
                        'servers; pass --num_ps_tasks 1 (or more) and their --ps_hosts')
    for job, hosts, count in (('ps', 'ps_hosts', 'num_ps_tasks'), ('worker', 'worker_hosts', 'worker_replicas')):
        if len(config[hosts]) != config[count]:
            raise UserError(f'{count}={config[count]} but {hosts} lists {len(config[hosts])} addresses '
                            f'({",".join(config[hosts]) or "none"}); pass --{hosts} host:port,... with one per '
                            f'{job} task, or set TF_CONFIG')
    if config['job_name'] not in ('ps', 'worker'):
        raise UserError(f'job_name must be ps or worker, got {config["job_name"]!r}; fix --job_name or TF_CONFIG')
    size = len(config[config['job_name'] + '_hosts'])
    if not 0 <= config['task'] < size:
        raise UserError(f'task {config["task"]} is not in the {size} {config["job_name"]} tasks of the cluster; '
                        f'pass --task 0..{size - 1}')
    return {'ps': config['ps_hosts'], 'worker': config['worker_hosts']}


# ---------------------------------------------------------------- run folders

def run_path(config, key):
    """Path of one of the run's folders (model_directory, log_directory, ...) inside run_directory."""
    return os.path.join(config['run_directory'], config[key])


def has_checkpoints(run_directory, config):
    return bool(all_checkpoints(os.path.join(run_directory, config['model_directory'])))


def new_run_directory(run_directory, config):
    """The first of `run_directory`, `run_directory-2`, `-3`, ... that holds no checkpoints."""
    candidate, number = run_directory, 1
    while has_checkpoints(candidate, config):
        number += 1
        candidate = f'{run_directory.rstrip(os.sep)}-{number}'
    return candidate


def list_checkpoints(model_directory, kind='model'):
    """{number: checkpoint prefix} of the complete checkpoints <kind>_<number> in a folder: model_<epoch>
    (saved after an epoch) or interrupted_<step> (saved on SIGINT / SIGTERM). The .index file is written last."""
    checkpoints = {}
    for index in glob.glob(os.path.join(model_directory, f'{kind}_*.index')):
        match = re.fullmatch(rf'{kind}_(\d+)\.index', os.path.basename(index))
        if match:
            checkpoints[int(match.group(1))] = index[:-len('.index')]
    return dict(sorted(checkpoints.items()))


def all_checkpoints(model_directory):
    """Prefixes of every complete checkpoint in a folder, model_<epoch> and interrupted_<step> alike."""
    return list(list_checkpoints(model_directory).values()) + \
        list(list_checkpoints(model_directory, 'interrupted').values())


# ---------------------------------------------------------------- MNIST

MNIST_FILES = {  # name: MD5 of the decompressed bytes (the published checksums of the canonical files)
    'train-images-idx3-ubyte': '6bbc9ace898e44ae57da46a324031adb',
    'train-labels-idx1-ubyte': 'a25bea736e30d166cdddb491f175f624',
    't10k-images-idx3-ubyte': '2646ac647ad5339dbf082846283269ea',
    't10k-labels-idx1-ubyte': '27ae3e4e09519cfbb04c329615203637',
}

MNIST_MIRRORS = (
    'https://storage.googleapis.com/cvdf-datasets/mnist/',
    'https://ossci-datasets.s3.amazonaws.com/mnist/',
)


def _read_idx_bytes(folder, name):
    """Decompressed bytes of `name` from `name.gz` or `name`, or None when neither exists."""
    for path, opener in ((os.path.join(folder, name + '.gz'), gzip.open), (os.path.join(folder, name), open)):
        if os.path.exists(path):
            try:
                with opener(path, 'rb') as f:
                    return f.read()
            except (OSError, EOFError) as error:
                raise UserError(f'cannot read {path} ({error}); delete it so it is downloaded again, '
                                f'or replace it with the canonical MNIST file')
    return None


def _parse_idx(data, name):
    """Array from the bytes of an IDX file: magic 0 0 type ndim, then big-endian int32 dims, then uint8 data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f'{name} is not an unsigned-byte IDX file; replace it with the canonical MNIST file')
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, '>i4', ndim, offset=4))
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise UserError(f'{name} holds {array.size} bytes for shape {shape}; replace it with the canonical file')
    return array.reshape(shape)


def download_mnist(folder, mirrors=MNIST_MIRRORS, names=None):
    """Download the missing MNIST files into folder, each checked before it takes its final name."""
    from tqdm import tqdm
    os.makedirs(folder, exist_ok=True)
    for name in names or MNIST_FILES:
        errors = []
        for mirror in mirrors:
            url = mirror + name + '.gz'
            temporary = os.path.join(folder, name + '.gz.part')
            try:
                with urllib.request.urlopen(url, timeout=30) as response, open(temporary, 'wb') as out:
                    total = int(response.headers.get('Content-Length') or 0) or None
                    with tqdm(total=total, unit='B', unit_scale=True, desc=f'downloading {name}.gz') as bar:
                        while True:
                            chunk = response.read(1 << 16)
                            if not chunk:
                                break
                            out.write(chunk)
                            bar.update(len(chunk))
                with gzip.open(temporary, 'rb') as f:
                    digest = hashlib.md5(f.read()).hexdigest()
                if digest != MNIST_FILES[name]:
                    raise OSError(f'checksum {digest} is not the published {MNIST_FILES[name]}')
                os.replace(temporary, os.path.join(folder, name + '.gz'))
                break
            except (OSError, EOFError, ValueError) as error:
                errors.append(f'{url}: {error}')
                if os.path.exists(temporary):
                    os.remove(temporary)
        else:
            raise UserError(f'MNIST file {name} is missing from {folder} and could not be downloaded '
                            f'({"; ".join(errors)}); put the four MNIST IDX files ({", ".join(MNIST_FILES)}, '
                            f'gzipped or not) in {folder}, or point --data_directory at a folder that has them')


def load_mnist(folder, mirrors=MNIST_MIRRORS):
    """MNIST from the standard IDX files in folder (downloaded there if missing), checksum-verified.

    Returns a dict: train_images (60000, 28, 28, 1) and test_images (10000, 28, 28, 1) float32 in [0, 1],
    train_labels and test_labels uint8.
    """
    missing = [name for name in MNIST_FILES if _read_idx_bytes(folder, name) is None]
    if missing:
        download_mnist(folder, mirrors, missing)
    arrays = {}
    for name, md5 in MNIST_FILES.items():
        data = _read_idx_bytes(folder, name)
        digest = hashlib.md5(data).hexdigest()
        if digest != md5:
            raise UserError(f'{os.path.join(folder, name)} has MD5 {digest}, not the published {md5}: the file is '
                            f'corrupted or not MNIST; delete it so it is downloaded again, or replace it')
        arrays[name] = _parse_idx(data, name)
    scale = lambda images: (images[..., None] / np.float32(255)).astype(np.float32)
    return {
        'train_images': scale(arrays['train-images-idx3-ubyte']),
        'train_labels': arrays['train-labels-idx1-ubyte'],
        'test_images': scale(arrays['t10k-images-idx3-ubyte']),
        'test_labels': arrays['t10k-labels-idx1-ubyte'],
    }


# ---------------------------------------------------------------- CelebA

CELEBA_HEIGHT, CELEBA_WIDTH = 218, 178  # every img_align_celeba JPEG
CLOSECROP_BOX = 140                     # 'closecrop': the central 140x140 box
CELEBA_SPLITS = {'train': (1, 162770), 'validation': (162771, 182637), 'test': (182638, 202599)}
PARTITION_CODES = {'train': '0', 'validation': '1', 'test': '2'}  # list_eval_partition.txt
CELEBA_HELP = ('download img_align_celeba.zip (and list_eval_partition.txt) from the CelebA page '
               'https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, unzip it and point --data_directory at the '
               'folder of the JPEGs')


def resizecrop_height(width):
    """'resizecrop' first resizes the 178x218 image to this height at the target width (78 for width 64)."""
    return round(CELEBA_HEIGHT * width / CELEBA_WIDTH)


def celeba_split(config, split):
    """Sorted paths of the split's JPEGs: by list_eval_partition.txt when the folder (or partition_file) has
    one, else by the official file-number ranges. Missing files are an error naming the first one."""
    folder = config['data_directory']
    if not os.path.isdir(folder):
        raise UserError(f'CelebA folder {folder} does not exist; {CELEBA_HELP}')
    present = {name for name in os.listdir(folder) if name.lower().endswith('.jpg')}
    if not present:
        raise UserError(f'no JPEGs in {folder}; {CELEBA_HELP}')
    partition = config['partition_file'] or os.path.join(folder, 'list_eval_partition.txt')
    if os.path.exists(partition):
        with open(partition) as f:
            rows = [line.split() for line in f if line.strip()]
        if any(len(row) != 2 or row[1] not in PARTITION_CODES.values() for row in rows):
            raise UserError(f'{partition} is not a CelebA partition file (lines "000001.jpg 0"); fix or remove it')
        wanted = sorted(name for name, code in rows if code == PARTITION_CODES[split])
        source = partition
    else:
        first, last = CELEBA_SPLITS[split]
        wanted = [f'{number:06d}.jpg' for number in range(first, last + 1)]
        source = f'the official {split} range {first:06d}.jpg-{last:06d}.jpg'
    missing = [name for name in wanted if name not in present]
    if missing or not wanted:
        raise UserError(f'{folder} has {len(wanted) - len(missing)} of the {len(wanted)} {split} JPEGs of {source} '
                        f'(first missing: {missing[0] if missing else "none listed"}); {CELEBA_HELP}, or give a '
                        'list_eval_partition.txt that lists the files you have')
    return [os.path.join(folder, name) for name in wanted]


def check_celeba_file(path):
    """None if path looks like an intact img_align_celeba JPEG, else what is wrong with it."""
    try:
        with Image.open(path) as image:
            if image.format != 'JPEG':
                return f'is a {image.format}, not a JPEG'
            if image.size != (CELEBA_WIDTH, CELEBA_HEIGHT):
                return f'is {image.size[0]}x{image.size[1]}, not {CELEBA_WIDTH}x{CELEBA_HEIGHT}'
            if image.mode != 'RGB':
                return f'is {image.mode} (not RGB colour)'
        with open(path, 'rb') as f:
            f.seek(-2, os.SEEK_END)
            if f.read() != b'\xff\xd9':
                return 'is truncated (no JPEG end marker)'
    except (OSError, SyntaxError):
        return 'cannot be read as an image'
    return None


def check_celeba_files(paths):
    """Refuse the first bad file (unreadable, truncated, greyscale, wrong size) before any training step."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        for path, problem in zip(paths, pool.map(check_celeba_file, paths, chunksize=256)):
            if problem:
                raise UserError(f'{path} {problem}; replace it with the original img_align_celeba file, or list '
                                'only good files in a list_eval_partition.txt')


def crop_celeba_pil(path, config):
    """The original's crop of one CelebA JPEG with PIL, as uint8 (the reference for the tf.data pipeline)."""
    height, width = config['image_height'], config['image_width']
    with Image.open(path) as image:
        image = image.convert('RGB')
        if config['celebA_crop'] == 'closecrop':
            top, left = (CELEBA_HEIGHT - CLOSECROP_BOX) // 2, (CELEBA_WIDTH - CLOSECROP_BOX) // 2
            image = image.crop((left, top, left + CLOSECROP_BOX, top + CLOSECROP_BOX))
            return np.asarray(image.resize((width, height), Image.LANCZOS))
        resized = image.resize((width, resizecrop_height(width)), Image.LANCZOS)
        top = (resizecrop_height(width) - height) // 2
        return np.asarray(resized)[top:top + height]


def celeba_cache_path(config, split, paths):
    """The cache file of a split: named by the crop, the size and a hash of the file list and sizes, so a
    changed crop style or file list never reads a stale cache."""
    digest = hashlib.sha1()
    for path in paths:
        digest.update(f'{os.path.basename(path)} {os.path.getsize(path)}\n'.encode())
    name = (f'{split}_{config["celebA_crop"]}_{config["image_width"]}x{config["image_height"]}_'
            f'{digest.hexdigest()[:16]}.npy')
    return os.path.join(config['celebA_cache_directory'], name)


def load_dataset(config, decode=None):
    """The dataset named by config['dataset'], as a dict:
    train: what the training input pipeline is fed (float images; CelebA: JPEG paths, or the uint8 cache),
    test_images: float test images (CelebA: the first num_test_images of the test split),
    grid_images: the 25 fixed images of the training grids (MNIST: test; CelebA: validation),
    test_labels (MNIST only).
    decode(paths) -> uint8 crops is the tf.data decoder, passed in by vae.py (CelebA only).
    """
    if config['dataset'] == 'MNIST':
        mnist = load_mnist(config['data_directory'])
        data = {'train': mnist['train_images'], 'test_images': mnist['test_images'],
                'grid_images': mnist['test_images'][:25], 'test_labels': mnist['test_labels']}
    else:
        splits = {split: celeba_split(config, split) for split in ('train', 'validation', 'test')}
        splits['train'] = splits['train'][:config['num_train_images'] or None]  # before checking and caching
        limit = config['num_test_images'] or None
        check_celeba_files(splits['train'] + splits['validation'][:25] + splits['test'][:limit])
        to_float = lambda crops: crops.astype(np.float32) / 127.5 - 1.0
        data = {'train': np.array(splits['train']), 'test_images': to_float(decode(splits['test'][:limit])),
                'grid_images': to_float(decode(splits['validation'][:25]))}
        if config['celebA_cache']:
            data['train'] = load_celeba_cache(config, splits['train'], decode)
    if config['num_train_images']:
        data['train'] = data['train'][:config['num_train_images']]
    if len(data['train']) < config['batch_size']:
        raise UserError(f'batch_size {config["batch_size"]} is larger than the {len(data["train"])} '
                        'training images; lower --batch_size')
    shape = (config['image_height'], config['image_width'], config['image_channels'])
    if data['test_images'].shape[1:] != shape:
        raise UserError(f'{config["dataset"]} images are {data["test_images"].shape[1:]} but the config says '
                        f'{shape}; fix image_height, image_width, image_channels')
    return data


def load_celeba_cache(config, paths, decode, chunk=2048):
    """The uint8 crops of paths from the cache, built first (with a progress bar) when it does not exist."""
    from tqdm import tqdm
    path = celeba_cache_path(config, 'train', paths)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        shape = (len(paths), config['image_height'], config['image_width'], config['image_channels'])
        crops = np.empty(shape, np.uint8)
        with tqdm(total=len(paths), unit='image', desc=f'building {path}') as bar:
            for start in range(0, len(paths), chunk):
                crops[start:start + chunk] = decode(paths[start:start + chunk])
                bar.update(len(paths[start:start + chunk]))
        with open(path + '.part', 'wb') as f:
            np.save(f, crops)
        os.replace(path + '.part', path)
        return crops
    return np.load(path)


# ---------------------------------------------------------------- images

def to_uint8(images, value_range=(0.0, 1.0)):
    """Float images in value_range to uint8 pixels, rounding rather than truncating."""
    low, high = value_range
    return np.clip(np.rint((np.asarray(images) - low) * (255 / (high - low))), 0, 255).astype(np.uint8)


def image_grid(images, rows, columns, value_range=(0.0, 1.0)):
    """A (rows*H, columns*W, C) uint8 mosaic of the first rows*columns images (floats in value_range)."""
    images = to_uint8(images[:rows * columns], value_range)
    count, height, width, channels = images.shape
    if count < rows * columns:
        images = np.concatenate([images, np.zeros((rows * columns - count, height, width, channels), np.uint8)])
    grid = images.reshape(rows, columns, height, width, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * height, columns * width, channels)


def save_grid(path, images, rows, columns, title=None, scale=2, value_range=(0.0, 1.0)):
    """Write a grid of images as PNG, upscaled `scale` times, with an optional title strip on top."""
    grid = image_grid(images, rows, columns, value_range)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).convert('RGB')
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    if title:
        titled = Image.new('RGB', (picture.width, picture.height + 16), 'white')
        titled.paste(picture, (0, 16))
        ImageDraw.Draw(titled).text((4, 2), title, fill='black')
        picture = titled
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    temporary = path + '.part.png'
    picture.save(temporary)
    os.replace(temporary, path)


def epoch_frames(folder):
    """[(epoch, path)] of the epoch_<N>.png frames in folder, in epoch order."""
    frames = []
    for path in glob.glob(os.path.join(folder, 'epoch_*.png')):
        match = re.fullmatch(r'epoch_(\d+)\.png', os.path.basename(path))
        if match:
            frames.append((int(match.group(1)), path))
    return sorted(frames)


def save_gif(path, frame_paths, duration_ms=400):
    """Assemble PNG frames into a looping GIF; the last frame is held three times as long."""
    frames = [Image.open(p).convert('RGB') for p in frame_paths]
    durations = [duration_ms] * (len(frames) - 1) + [duration_ms * 3]
    temporary = path + '.part.gif'
    frames[0].save(temporary, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    os.replace(temporary, path)
