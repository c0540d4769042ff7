"""Everything about data, for both datasets: the MNIST files (download, checksums), CelebA (split, file checks,
the TensorFlow crops and the PIL reference crop, the uint8 cache), the test images a model is evaluated on, and the
tf.data training input.

    load_dataset(config)      -> {'train', 'test_images', 'grid_images', 'test_labels' (MNIST)}
    input_pipeline(config)    -> the training batches, fed once per epoch (or endless, a cluster worker's shard)
"""
import collections
import gzip
import hashlib
import os
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import simplejpeg
from PIL import Image
from tqdm import tqdm

import config_keys
import deploy
import process
import run_folder
from process import UserError

tf, tf1 = process.tf, process.tf1


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
            except (OSError, EOFError, zlib.error) as error:  # zlib.error: a gzip stream damaged inside
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
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f'the MNIST data_directory {folder} is a file, not a folder; pass --data_directory with the '
                        'folder of the four IDX files (or a new folder to download them into)')
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


def celeba_splits(config):
    """{'train', 'validation', 'test'}: sorted paths of each split's JPEGs, by list_eval_partition.txt when the
    folder (or partition_file) has one, else by the official file-number ranges. A folder may hold a subset of
    img_align_celeba: each split is then the part of it that is here, with a warning naming what is missing; a
    split with none of its files is an error, and JPEGs the partition file does not list are left out, with a
    warning."""
    folder = config['data_directory']
    if not os.path.isdir(folder):
        raise UserError(f'CelebA folder {folder} {"is a file" if os.path.exists(folder) else "does not exist"}; '
                        f'{CELEBA_HELP}')
    present = {name for name in os.listdir(folder) if name.lower().endswith('.jpg')}
    if not present:
        raise UserError(f'no JPEGs in {folder}; {CELEBA_HELP}')
    partition = config['partition_file'] or os.path.join(folder, 'list_eval_partition.txt')
    if config['partition_file'] and not os.path.lexists(partition):
        raise UserError(f'--partition_file {partition} does not exist; give the list_eval_partition.txt you have, '
                        "or '' to split by the official file-number ranges")
    if os.path.lexists(partition):
        rows = [line.split() for line in process.read_text(partition, 'CelebA partition file').splitlines()
                if line.strip()]
        if any(len(row) != 2 or row[1] not in PARTITION_CODES.values() for row in rows):
            raise UserError(f'{partition} is not a CelebA partition file (lines "000001.jpg 0"); fix or remove it')
        seen = {}
        for name, code in rows:  # an image listed twice, or in two splits, would be tested on what it trained on
            if name in seen:
                raise UserError(f'{partition} lists {name} twice (splits {seen[name]} and {code}); list each image '
                                'once, in one split')
            seen[name] = code
        wanted = {split: sorted(name for name, code in rows if code == PARTITION_CODES[split])
                  for split in PARTITION_CODES}
        sources = dict.fromkeys(PARTITION_CODES, partition)
        unlisted = sorted(present - set(seen))
        if unlisted:
            print(f'warning: {len(unlisted)} JPEGs in {folder} are in no split of {partition} (first: '
                  f'{unlisted[0]}); they are not used')
    else:
        wanted = {split: [f'{number:06d}.jpg' for number in range(first, last + 1)]
                  for split, (first, last) in CELEBA_SPLITS.items()}
        sources = {split: f'the official {split} range {first:06d}.jpg-{last:06d}.jpg'
                   for split, (first, last) in CELEBA_SPLITS.items()}
    splits = {}
    for split, names in wanted.items():
        here = [name for name in names if name in present]
        missing = [name for name in names if name not in present]
        if not here:
            raise UserError(f'{folder} has none of the {len(names)} {split} JPEGs of {sources[split]} (first '
                            f'missing: {missing[0] if missing else "none listed"}); {CELEBA_HELP}, or give a '
                            'list_eval_partition.txt that lists the files you have')
        if missing:
            print(f'warning: {folder} has {len(here)} of the {len(names)} {split} JPEGs of {sources[split]} (first '
                  f'missing: {missing[0]}); using those {len(here)}')
        splits[split] = [os.path.join(folder, name) for name in here]
    return splits


def check_celeba_file(path):
    """None if path is an intact img_align_celeba JPEG (it decodes whole, without a warning), else what is wrong
    with it."""
    try:
        with Image.open(path) as image:
            if image.format != 'JPEG':
                return f'is a {image.format}, not a JPEG'
            if image.size != (CELEBA_WIDTH, CELEBA_HEIGHT):
                return f'is {image.size[0]}x{image.size[1]}, not {CELEBA_WIDTH}x{CELEBA_HEIGHT}'
            if image.mode != 'RGB':
                return f'is {image.mode} (not RGB colour)'
        with open(path, 'rb') as f:
            data = f.read()
        if data[-2:] != b'\xff\xd9':
            return 'is truncated (no JPEG end marker)'
        # A whole decode in libjpeg-turbo's strict mode: a damaged body that still ends in the marker decodes to
        # garbage with only a libjpeg warning in TensorFlow and PIL; here the warning is an error.
        simplejpeg.decode_jpeg(data, strict=True)
    except (OSError, SyntaxError):
        return 'cannot be read as an image'
    except ValueError as error:
        return f'has corrupt image data ({error})'
    return None


def check_celeba_files(paths):
    """Refuse the first bad file (unreadable, truncated, greyscale, wrong size) before any training step."""
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


def files_digest(paths):
    """SHA-1 of the files' names and bytes, in order: what a kept thing made from them (the cache, a sampler's
    fit) is keyed by, so another file under the same name, even of the same size, is never read back stale."""
    digest = hashlib.sha1()
    for path in paths:
        digest.update(f'{os.path.basename(str(path))}\n'.encode())
        with open(path, 'rb') as f:
            digest.update(hashlib.sha1(f.read()).digest())
    return digest.hexdigest()


def celeba_cache_path(config, split, paths):
    """The cache file of a split: named by the crop, the size and files_digest of its files, so a changed crop
    style, file list or file never reads a stale cache."""
    name = (f'{split}_{config["celebA_crop"]}_{config["image_width"]}x{config["image_height"]}_'
            f'{files_digest(paths)[:16]}.npy')
    return os.path.join(config['celebA_cache_directory'], name)


def load_dataset(config, training=True):
    """The dataset named by config['dataset'], as a dict (training=False, for inference: CelebA's training files are
    listed but neither checked nor cached):
    train: what the training input pipeline is fed (float images; CelebA: JPEG paths, or the uint8 cache),
    test_images: float test images (CelebA: the first num_test_images of the test split),
    grid_images: the 25 fixed images of the training grids (MNIST: test; CelebA: validation),
    test_labels (MNIST only).
    """
    if config['dataset'] == 'MNIST':
        mnist = load_mnist(config['data_directory'])
        data = {'train': mnist['train_images'], 'test_images': mnist['test_images'],
                'grid_images': mnist['test_images'][:25], 'test_labels': mnist['test_labels']}
    else:
        splits = celeba_splits(config)
        splits['train'] = splits['train'][:config['num_train_images'] or None]  # before checking and caching
        limit = config['num_test_images'] or None
        check_celeba_files((splits['train'] if training else []) + splits['validation'][:25] + splits['test'][:limit])
        data = {'train': np.array(splits['train']),
                'test_images': celeba_pixels(decode_celeba_files(splits['test'][:limit], config)),
                'grid_images': celeba_pixels(decode_celeba_files(splits['validation'][:25], config))}
        if config['celebA_cache'] and training:
            data['train'] = load_celeba_cache(config, splits['train'])
    if config['num_train_images']:
        data['train'] = data['train'][:config['num_train_images']]
    shape = (config['image_height'], config['image_width'], config['image_channels'])
    if data['test_images'].shape[1:] != shape:
        raise UserError(f'{config["dataset"]} images are {data["test_images"].shape[1:]} but the config says '
                        f'{shape}; fix image_height, image_width, image_channels')
    return data


def load_celeba_cache(config, paths, chunk=2048):
    """The uint8 crops of paths from the cache, built first (with a progress bar) when it does not exist; a cache
    that does not read back as those crops (damaged, truncated) is a warning and is built again."""
    path = celeba_cache_path(config, 'train', paths)
    shape = (len(paths), config['image_height'], config['image_width'], config['image_channels'])
    if os.path.exists(path):
        try:
            crops = np.load(path)
            if crops.shape == shape and crops.dtype == np.uint8:
                return crops
            problem = f'holds {crops.dtype} {crops.shape}, not uint8 {shape}'
        except (OSError, ValueError, EOFError) as error:
            problem = str(error) or type(error).__name__
        print(f'warning: the cache {path} {problem}; building it again')
    run_folder.make_folder(os.path.dirname(path) or '.', 'celebA_cache_directory')
    crops = np.empty(shape, np.uint8)
    with tqdm(total=len(paths), unit='image', desc=f'building {path}') as bar:
        for start in range(0, len(paths), chunk):
            crops[start:start + chunk] = decode_celeba_files(paths[start:start + chunk], config)
            bar.update(len(paths[start:start + chunk]))
    process.write_atomically(path, lambda f: np.save(f, crops))
    return crops


def celeba_pixels(crops):
    """CelebA crops in [0, 255] (uint8 or float; an array or a tensor) as the model's pixels in [-1, 1]: the
    loader decides the data's range (config_keys.PIXEL_RANGES)."""
    if isinstance(crops, np.ndarray):
        return crops.astype(np.float32) / 127.5 - 1.0
    return tf.cast(crops, tf.float32) / 127.5 - 1.0


def decode_celeba(contents, config):
    """A CelebA JPEG (178x218) to a float image in [-1, 1] with the original's crops: 'closecrop' decodes only
    the central 140x140 box and resizes it to 64x64; 'resizecrop' resizes the whole image to 64x78 and keeps
    rows 7..70. Lanczos with antialiasing, like PIL's resize; the accurate DCT, whose output matches PIL's."""
    height, width = config['image_height'], config['image_width']
    if config['celebA_crop'] == 'closecrop':
        top, left = (CELEBA_HEIGHT - CLOSECROP_BOX) // 2, (CELEBA_WIDTH - CLOSECROP_BOX) // 2
        image = tf.image.decode_and_crop_jpeg(contents, [top, left, CLOSECROP_BOX, CLOSECROP_BOX],
                                              channels=3, dct_method='INTEGER_ACCURATE')
        image = tf.image.resize(tf.cast(image, tf.float32), [height, width], method='lanczos3', antialias=True)
    else:
        resized_height = resizecrop_height(width)
        image = tf.image.decode_jpeg(contents, channels=3, dct_method='INTEGER_ACCURATE')
        image = tf.image.resize(tf.cast(image, tf.float32), [resized_height, width], method='lanczos3',
                                antialias=True)
        top = (resized_height - height) // 2
        image = image[top:top + height]
    return celeba_pixels(tf.clip_by_value(image, 0.0, 255.0))  # lanczos overshoots: clip before scaling


def decode_celeba_files(paths, config, batch_size=256):
    """uint8 crops of CelebA JPEGs through the training decoder (for the grids, the test set and the cache)."""
    with tf.Graph().as_default() as graph:
        files = tf1.placeholder(tf.string, [None])
        dataset = (tf.data.Dataset.from_tensor_slices(files)
                   .map(lambda path: decode_celeba(tf.io.read_file(path), config), num_parallel_calls=tf.data.AUTOTUNE)
                   .batch(batch_size).prefetch(2))
        iterator = tf1.data.make_initializable_iterator(dataset)
        crops = tf.cast(tf.round((iterator.get_next() + 1.0) * 127.5), tf.uint8)
    graph.finalize()
    batches = []
    with tf1.Session(graph=graph, config=deploy.session_config(config)) as sess:
        sess.run(iterator.initializer, {files: np.array(paths)})
        for _ in range(-(-len(paths) // batch_size)):
            batches.append(sess.run(crops))
    return np.concatenate(batches) if batches else np.zeros((0, *config_keys.image_shape(config)), np.uint8)


# ---------------------------------------------------------------- what the model sees

def evaluation_images(config, images):
    """The test images a model is evaluated on: as they are, or one fixed seeded binarisation when it was
    trained on binarised data (so numbers are comparable between runs and with the literature)."""
    if not config['binarize']:
        return images
    return (np.random.RandomState(config['test_seed']).uniform(size=images.shape) < images).astype(np.float32)


def training_batch(config, images):
    """What the model trains on of a batch of images (a tensor): the images, or with binarize a fresh
    Bernoulli(intensity) draw of every pixel at every step (dynamic binarisation)."""
    if not config['binarize']:
        return images
    return tf.cast(tf.random.uniform(tf.shape(images)) < images, tf.float32)


# The training input: run initializer with feed(epoch, position) to start it, then images is the next batch.
TrainingInput = collections.namedtuple('TrainingInput', [
    'images',       # the next batch, [batch_size, height, width, channels] floats in the data's pixel range
    'initializer',  # (re)starts the input, run with feed(epoch, position)
    'feed',         # feed(epoch, position): the data and the order of epoch `epoch` from its batch `position`, an
                    # order seeded by the epoch (a resumed run sees an unbroken one's); a cluster worker's endless
                    # shard has one order seeded by its task, whatever the arguments
])


def input_pipeline(config, train, shard=None):
    """The training input of `train` (what load_dataset returned as 'train': float images for MNIST, JPEG
    paths decoded in parallel or the uint8 crops of the cache for CelebA): a placeholder fed once per epoch,
    shuffled with a seed, parsed, batched, prefetched. shard=(count, index): a cluster worker's endless input
    instead, every epoch a new order of its 1/count share. Returns a TrainingInput.
    """
    shape = config_keys.image_shape(config)
    if config['dataset'] != 'celebA':
        train_data = tf1.placeholder(tf.float32, [None, *shape], name='train_data')
        parse = tf.identity
    elif config['celebA_cache']:
        train_data = tf1.placeholder(tf.uint8, [None, *shape], name='train_data')
        parse = celeba_pixels
    else:
        train_data = tf1.placeholder(tf.string, [None], name='train_data')
        parse = lambda path: decode_celeba(tf.io.read_file(path), config)
    shuffle_seed = tf1.placeholder(tf.int64, [], name='shuffle_seed')
    skip_batches = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], name='skip_batches')
    # Shuffle indices, not images: a 60,000-image shuffle buffer costs a copy of every image each epoch.
    # Skipping happens on indices too, so resuming mid-epoch decodes nothing it skips.
    indices = tf.data.Dataset.range(tf.shape(train_data, out_type=tf.int64)[0])
    if shard:
        indices = indices.shard(*shard)
    indices = indices.shuffle(tf.shape(train_data, out_type=tf.int64)[0], seed=shuffle_seed)
    indices = indices.repeat() if shard else indices.skip(skip_batches * config['batch_size'])
    if config['dataset'] == 'celebA' and not config['celebA_cache']:  # decode JPEGs in parallel, one per call
        dataset = (indices.map(lambda i: parse(train_data[i]), num_parallel_calls=os.cpu_count())
                   .batch(config['batch_size'], drop_remainder=True))
    else:  # arrays in memory: one gather per batch
        dataset = (indices.batch(config['batch_size'], drop_remainder=True)
                   .map(lambda batch: parse(tf.gather(train_data, batch))))
    # tf.data's autotuner models the pipeline on a background thread; on a 2-core machine that thread slows
    # the training step by up to a third (bench/throughput.py), and this pipeline has nothing left to tune.
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = dataset.prefetch(2).with_options(options)
    iterator = tf1.data.make_initializable_iterator(dataset)
    images = tf.ensure_shape(iterator.get_next(), [config['batch_size'], *shape])
    order = lambda epoch: config['seed'] * 100003 + (shard[1] if shard else epoch)
    feed = lambda epoch, position: {train_data: train, shuffle_seed: order(epoch),
                                    skip_batches: 0 if shard else position}
    return TrainingInput(images, iterator.initializer, feed)
