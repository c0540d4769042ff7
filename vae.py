"""Convolutional VAE (Kingma & Welling, arXiv:1312.6114) in TensorFlow 1.x style graph mode.

    python vae.py                       # train the dataset selected in config.py (resumes if it has checkpoints)
    python vae.py --fresh               # start over in a new run folder, keeping the old one
    python vae.py --z_dim 32            # any config key can be overridden

The graph functions (encoder, decoder, build_vae) are imported by vae_inference.py and the tests.
"""
import contextlib
import glob
import io
import json
import os
import signal
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

import utils

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's informational logging off the console
with utils.silence_stderr():
    import tensorflow as tf

tf1 = tf.compat.v1
tf1.disable_eager_execution()

MIN_STD = 1e-6  # floor under the softplus so log(z_std) in the KL stays finite
# Graph collections, in step: each training batch norm's moving averages and the batch moments they follow.
MOVING_AVERAGES, BATCH_MOMENTS = 'moving_averages', 'batch_moments'
GRID_SIDE = 5   # the training grids are GRID_SIDE x GRID_SIDE images


# ---------------------------------------------------------------- layers

def weight(name, shape, config):
    return tf1.get_variable(name, shape, initializer=tf1.truncated_normal_initializer(stddev=config['init_stddev']))


def dense(x, units, name, config):
    with tf1.variable_scope(name):
        w = weight('w', [x.shape[-1], units], config)
        b = tf1.get_variable('b', [units], initializer=tf1.zeros_initializer())
        return tf.matmul(x, w) + b


# The convolutions carry no bias: the batch norm after each one has its own offset.
def conv2d(x, filters, stride, name, config):
    with tf1.variable_scope(name):
        k = config['kernel_size']
        w = weight('w', [k, k, x.shape[-1], filters], config)
        return tf.nn.conv2d(x, w, strides=stride, padding='SAME')


def deconv2d(x, filters, stride, name, config):
    """Transposed convolution that multiplies height and width by stride."""
    with tf1.variable_scope(name):
        k = config['kernel_size']
        w = weight('w', [k, k, filters, x.shape[-1]], config)
        height, width = x.shape[1] * stride, x.shape[2] * stride
        output_shape = tf.stack([tf.shape(x)[0], height, width, filters])
        y = tf.nn.conv2d_transpose(x, w, output_shape, strides=stride, padding='SAME')
        return tf.ensure_shape(y, [None, height, width, filters])


def batch_norm(x, name, training, config):
    """Batch norm over all axes but the last: batch statistics while training, moving averages otherwise.

    Training adds the moving averages and the batch moments to the MOVING_AVERAGES and BATCH_MOMENTS
    collections; the training graph turns them into one update per moving average (moving_average_updates).
    """
    with tf1.variable_scope(name):
        channels = x.shape[-1]
        scale = tf1.get_variable('scale', [channels], initializer=tf1.ones_initializer())
        offset = tf1.get_variable('offset', [channels], initializer=tf1.zeros_initializer())
        moving_mean = tf1.get_variable('moving_mean', [channels], initializer=tf1.zeros_initializer(),
                                       trainable=False)
        moving_variance = tf1.get_variable('moving_variance', [channels], initializer=tf1.ones_initializer(),
                                           trainable=False)
        # The fused kernel is the fast path on CPU and GPU; it wants NHWC, so dense features become 1x1 maps.
        x4 = x if x.shape.ndims == 4 else tf.reshape(x, [-1, 1, 1, channels])
        if training:
            y, mean, variance = tf1.nn.fused_batch_norm(x4, scale, offset, epsilon=config['bn_epsilon'],
                                                        is_training=True)
            for moving_average, moment in ((moving_mean, mean), (moving_variance, variance)):
                tf1.add_to_collection(MOVING_AVERAGES, moving_average)
                tf1.add_to_collection(BATCH_MOMENTS, moment)
        else:
            y, _, _ = tf1.nn.fused_batch_norm(x4, scale, offset, mean=moving_mean, variance=moving_variance,
                                              epsilon=config['bn_epsilon'], is_training=False)
        return tf.reshape(y, tf.shape(x)) if x.shape.ndims != 4 else y


# ---------------------------------------------------------------- model

def encoder(images, config, training):
    """q(z|x): strided conv -> BN -> ReLU blocks, then dense heads for the posterior mean and stddev."""
    with tf1.variable_scope('encoder', reuse=tf1.AUTO_REUSE):
        h = images
        for i, (filters, stride) in enumerate(zip(config['encoder_filters'], config['encoder_strides'])):
            h = tf.nn.relu(batch_norm(conv2d(h, filters, stride, f'conv{i}', config), f'bn{i}', training, config))
        h = tf.reshape(h, [-1, int(np.prod(h.shape[1:]))])
        z_mean = dense(h, config['z_dim'], 'z_mean', config)
        z_std = tf.nn.softplus(dense(h, config['z_dim'], 'z_std', config)) + MIN_STD
        return z_mean, z_std


def encoder_output_shape(config):
    """Height, width and channels of the last encoder feature map (SAME padding rounds up)."""
    height, width = config['image_height'], config['image_width']
    for stride in config['encoder_strides']:
        height, width = -(-height // stride), -(-width // stride)
    return height, width, config['encoder_filters'][-1]


def decoder(z, config, training):
    """p(x|z): dense -> BN -> ReLU -> reshape, then transposed conv blocks with decoder_strides, and the output
    head: 'dense_sigmoid' (MNIST: BN -> ReLU after the last transposed conv, then a dense layer to the pixels)
    or 'conv_tanh' (CelebA: the last transposed conv is the output).

    Returns the image-shaped pre-activation; decoded_image() of it is the decoded image (the Gaussian mean,
    or for 'bernoulli' the pixel probabilities).
    """
    with tf1.variable_scope('decoder', reuse=tf1.AUTO_REUSE):
        start = encoder_output_shape(config)
        h = tf.nn.relu(batch_norm(dense(z, int(np.prod(start)), 'fc', config), 'bn_fc', training, config))
        h = tf.reshape(h, [-1, *start])
        shape = image_shape(config)
        layers = list(zip(config['decoder_filters'], config['decoder_strides']))
        for i, (filters, stride) in enumerate(layers):
            h = deconv2d(h, filters, stride, f'deconv{i}', config)
            if config['output_head'] == 'conv_tanh' and i == len(layers) - 1:
                return h
            h = tf.nn.relu(batch_norm(h, f'bn{i}', training, config))
        # The transposed convs overshoot (28 -> 32 for MNIST); a dense layer maps back to the image.
        h = tf.reshape(h, [-1, int(np.prod(h.shape[1:]))])
        logits = dense(h, int(np.prod(shape)), 'output', config)
        return tf.reshape(logits, [-1, *shape])


def decoded_image(logits, config):
    """The decoder's output activation: sigmoid to [0, 1] or tanh to [-1, 1], the range of the data."""
    return tf.tanh(logits) if config['output_head'] == 'conv_tanh' else tf.sigmoid(logits)


def pixel_range(config):
    """(low, high) of the model's images: MNIST is scaled to [0, 1], CelebA to [-1, 1]."""
    return (-1.0, 1.0) if config['output_head'] == 'conv_tanh' else (0.0, 1.0)


def image_shape(config):
    return [config['image_height'], config['image_width'], config['image_channels']]


def decoder_log_variance(config):
    """log sigma^2 of the Gaussian decoder: fixed at log(kl_weight * D / 2) for 'gaussian' (the variance under
    which the original loss is the negative ELBO), a learned variable (per pixel or global) for
    'gaussian_learned', floored at decoder_min_variance."""
    pixels = int(np.prod(image_shape(config)))
    if config['likelihood'] == 'gaussian':
        return tf.constant(np.log(config['kl_weight'] * pixels / 2), tf.float32)
    shape = image_shape(config) if config['decoder_variance'] == 'pixel' else []
    with tf1.variable_scope('decoder', reuse=tf1.AUTO_REUSE):
        raw = tf1.get_variable('log_variance', shape, initializer=tf1.zeros_initializer())
    return tf.math.log(config['decoder_min_variance'] + tf.exp(raw))


def log_likelihood(images, logits, config):
    """log p(x|z) in nats, one value per image, under the configured decoder likelihood."""
    axes = [1, 2, 3]
    if config['likelihood'] == 'bernoulli':
        return -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=images, logits=logits), axes)
    log_variance = decoder_log_variance(config)
    squared_error = tf.square(images - decoded_image(logits, config))
    return -0.5 * tf.reduce_sum(np.log(2 * np.pi) + log_variance + squared_error * tf.exp(-log_variance), axes)


def kl_divergence(z_mean, z_std):
    """KL(N(z_mean, z_std^2) || N(0, I)) in closed form, summed over latent dimensions: one value per example."""
    return 0.5 * tf.reduce_sum(tf.square(z_mean) + tf.square(z_std) - 2.0 * tf.math.log(z_std) - 1.0, axis=1)


def normal_log_density(z, mean, std):
    """log N(z; mean, std^2) summed over the last axis."""
    return -0.5 * tf.reduce_sum(np.log(2 * np.pi) + 2.0 * tf.math.log(std) + tf.square((z - mean) / std), axis=-1)


def importance_log_weights(images, z_mean, z_std, log_likelihood_fn, k):
    """[k, batch] log w = log p(x|z) + log p(z) - log q(z|x) for k samples z ~ q(z|x) per image.

    Their mean over k estimates the ELBO; log-mean-exp over k is the importance-weighted bound of
    Burda et al. (2015), which tightens towards log p(x) as k grows. log_likelihood_fn(images, z) gives
    log p(x|z) for a flat batch.
    """
    batch, z_dim = tf.shape(z_mean)[0], tf.shape(z_mean)[1]
    z = z_mean + z_std * tf.random.normal([k, batch, z_dim])
    log_q = normal_log_density(z, z_mean, z_std)
    log_prior = normal_log_density(z, 0.0, 1.0)
    tiled = tf.tile(images[None], [k] + [1] * images.shape.ndims)
    flat = lambda t: tf.reshape(t, tf.concat([[k * batch], tf.shape(t)[2:]], 0))
    log_px = tf.reshape(log_likelihood_fn(flat(tiled), flat(z)), [k, batch])
    return log_px + log_prior - log_q


def evaluation_images(config, images):
    """The test images a model is evaluated on: as they are, or one fixed seeded binarisation when it was
    trained on binarised data (so numbers are comparable between runs and with the literature)."""
    if not config['binarize']:
        return images
    return (np.random.RandomState(config['seed']).uniform(size=images.shape) < images).astype(np.float32)


def build_vae(images, config, training):
    """The VAE on a batch of images in [0, 1]. Training decodes a reparameterised sample of q(z|x);
    inference decodes the posterior mean, so reconstructions are deterministic.

    With likelihood 'gaussian' the loss is the original's: per-pixel MSE + kl_weight * batch-mean KL, the
    negative ELBO of a Gaussian decoder with fixed variance kl_weight * D / 2 (D pixels), divided by D and up to
    a constant. With 'gaussian_learned' or 'bernoulli' it is the batch mean of the negative ELBO in nats.
    """
    z_mean, z_std = encoder(images, config, training)
    z = z_mean + z_std * tf.random.normal(tf.shape(z_mean)) if training else z_mean
    logits = decoder(z, config, training)
    reconstruction = decoded_image(logits, config)
    reconstruction_loss = tf.reduce_mean(tf.square(images - reconstruction))
    kl = tf.reduce_mean(kl_divergence(z_mean, z_std))
    if config['likelihood'] == 'gaussian':
        loss = reconstruction_loss + config['kl_weight'] * kl
    else:
        loss = kl - tf.reduce_mean(log_likelihood(images, logits, config))
    return {'z_mean': z_mean, 'z_std': z_std, 'z': z, 'logits': logits, 'reconstruction': reconstruction,
            'reconstruction_loss': reconstruction_loss, 'kl': kl, 'loss': loss}


def fixed_latents(config, count):
    """The same `count` prior samples z ~ N(0, I) for every frame of a run (seeded)."""
    return np.random.RandomState(config['seed']).standard_normal((count, config['z_dim'])).astype(np.float32)


def session_config(config):
    threads = config['num_threads']
    # clone_on_cpu towers each need a CPU device of their own: /cpu:0 ... /cpu:<num_clones - 1>.
    cpus = config['num_clones'] if config['clone_on_cpu'] else 1
    return tf1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads,
                           device_count={'CPU': cpus}, allow_soft_placement=True)


def build_inference_graph(config):
    """Placeholders and outputs for reconstructing images and decoding latents with the moving averages."""
    tf1.set_random_seed(config['seed'])  # op determinism refuses unseeded random ops, initialisers included
    images = tf1.placeholder(tf.float32, [None, *image_shape(config)], name='eval_images')
    z = tf1.placeholder(tf.float32, [None, config['z_dim']], name='eval_z')
    vae = build_vae(images, config, training=False)
    # One-sample estimate of the negative ELBO in nats, per image, under the trained decoder likelihood.
    z_sample = vae['z_mean'] + vae['z_std'] * tf.random.normal(tf.shape(vae['z_mean']))
    negative_elbo = kl_divergence(vae['z_mean'], vae['z_std']) - \
        log_likelihood(images, decoder(z_sample, config, training=False), config)
    return {'images': images, 'reconstruction': vae['reconstruction'], 'z_mean': vae['z_mean'],
            'z_std': vae['z_std'], 'negative_elbo': negative_elbo,
            'z': z, 'generation': decoded_image(decoder(z, config, training=False), config)}


def decode_celeba(contents, config):
    """A CelebA JPEG (178x218) to a float image in [-1, 1] with the original's crops: 'closecrop' decodes only
    the central 140x140 box and resizes it to 64x64; 'resizecrop' resizes the whole image to 64x78 and keeps
    rows 7..70. Lanczos with antialiasing, like PIL's resize; the accurate DCT, whose output matches PIL's."""
    height, width = config['image_height'], config['image_width']
    if config['celebA_crop'] == 'closecrop':
        top, left = (utils.CELEBA_HEIGHT - utils.CLOSECROP_BOX) // 2, (utils.CELEBA_WIDTH - utils.CLOSECROP_BOX) // 2
        image = tf.image.decode_and_crop_jpeg(contents, [top, left, utils.CLOSECROP_BOX, utils.CLOSECROP_BOX],
                                              channels=3, dct_method='INTEGER_ACCURATE')
        image = tf.image.resize(tf.cast(image, tf.float32), [height, width], method='lanczos3', antialias=True)
    else:
        resized_height = utils.resizecrop_height(width)
        image = tf.image.decode_jpeg(contents, channels=3, dct_method='INTEGER_ACCURATE')
        image = tf.image.resize(tf.cast(image, tf.float32), [resized_height, width], method='lanczos3',
                                antialias=True)
        top = (resized_height - height) // 2
        image = image[top:top + height]
    return tf.clip_by_value(image, 0.0, 255.0) / 127.5 - 1.0  # lanczos overshoots: clip before scaling


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
    with tf1.Session(graph=graph, config=session_config(config)) as sess:
        sess.run(iterator.initializer, {files: np.array(paths)})
        for _ in range(-(-len(paths) // batch_size)):
            batches.append(sess.run(crops))
    return np.concatenate(batches) if batches else np.zeros((0, *image_shape(config)), np.uint8)


def load_data(config):
    """utils.load_dataset with this file's tf.data JPEG decoder for CelebA."""
    return utils.load_dataset(config, decode=lambda paths: decode_celeba_files(paths, config))


def input_pipeline(config, shard=None):
    """The training input: a placeholder fed once per epoch, shuffled with a seed, parsed, batched, prefetched.
    shard=(count, index): a cluster worker's endless input instead, every epoch a new order of its 1/count share.

    What is fed depends on the data: float images (MNIST), JPEG paths decoded in parallel (CelebA), or the
    uint8 crops of the CelebA cache. Returns (placeholders, iterator, batch of float images).
    """
    shape = image_shape(config)
    if config['dataset'] != 'celebA':
        train_data = tf1.placeholder(tf.float32, [None, *shape], name='train_data')
        parse = tf.identity
    elif config['celebA_cache']:
        train_data = tf1.placeholder(tf.uint8, [None, *shape], name='train_data')
        parse = lambda crop: tf.cast(crop, tf.float32) / 127.5 - 1.0
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
    return {'train_data': train_data, 'shuffle_seed': shuffle_seed, 'skip_batches': skip_batches}, iterator, images


VARIABLE_OPS = ('Variable', 'VariableV2', 'VarHandleOp')


def tower_devices(config):
    """The device of each tower: the GPUs in order, or CPU devices with clone_on_cpu ('' = TensorFlow's choice)."""
    count = config['num_clones']
    if config['clone_on_cpu']:
        return [f'/cpu:{i}' for i in range(count)]
    if count == 1:
        return ['']
    gpus = len(tf.config.list_physical_devices('GPU'))
    if count > gpus:
        raise utils.UserError(f'num_clones={count} towers need {count} GPUs but {gpus} are visible; pass '
                              f'--clone_on_cpu true to put them on CPU devices, or --num_clones {max(gpus, 1)}')
    return [f'/gpu:{i}' for i in range(count)]


def on_device(device):
    """A device function: ops on `device`, variables left to the enclosing placement (the parameter servers,
    or TensorFlow's default device), so every tower shares one copy of each variable."""
    return lambda op: '' if op.type in VARIABLE_OPS else device


def merge_towers(towers):
    """One dict of the towers' outputs: scalars averaged (each tower's loss is a mean over an equal share of the
    batch, so this is the mean over the whole batch), per-image tensors concatenated in batch order."""
    if len(towers) == 1:
        return towers[0]
    return {key: tf.add_n([tower[key] for tower in towers]) / len(towers) if towers[0][key].shape.ndims == 0
            else tf.concat([tower[key] for tower in towers], 0) for key in towers[0]}


def average_gradients(tower_gradients):
    """[(gradient, variable)] averaged over towers: the gradient of the whole-batch mean loss."""
    if len(tower_gradients) == 1:
        return tower_gradients[0]
    return [(tf.add_n([gradients[i][0] for gradients in tower_gradients]) / len(tower_gradients), variable)
            for i, (_, variable) in enumerate(tower_gradients[0])]


def moving_average_updates(config):
    """One update per batch-norm moving average, towards the mean over towers of their batch moments (with
    one tower, the usual exponential moving average of the batch moments)."""
    moments = {}
    for variable, value in zip(tf1.get_collection(MOVING_AVERAGES), tf1.get_collection(BATCH_MOMENTS)):
        moments.setdefault(variable.name, (variable, []))[1].append(value)
    decay = 1.0 - config['bn_momentum']
    return [tf1.assign_sub(variable, (variable - tf.add_n(values) / len(values)) * decay)
            for variable, values in moments.values()]


def build_training_graph(config, feed_input=False, cluster=None):
    """tf.data input, the training VAE on num_clones towers, Adam, counters, summaries and the inference outputs
    in one graph. feed_input=True replaces the tf.data input by a placeholder 'images' fed per step (for the
    benchmark). With a cluster ({'ps': [...], 'worker': [...]}), this worker reads its own shard of the data,
    and with sync_replicas the optimizer waits for a gradient from every worker before each update."""
    tf1.set_random_seed(config['seed'])  # seeds the initial weights and the sampling noise
    if feed_input:
        placeholders, iterator = {}, None
        images = tf1.placeholder(tf.float32, [config['batch_size'], *image_shape(config)], name='images')
    else:
        shard = (len(cluster['worker']), config['task']) if cluster else None
        placeholders, iterator, images = input_pipeline(config, shard)
    model_input = images
    if config['binarize']:  # dynamic binarisation: a fresh Bernoulli(intensity) draw of every pixel at every step
        model_input = tf.cast(tf.random.uniform(tf.shape(images)) < images, tf.float32)

    global_step = tf1.train.get_or_create_global_step()
    epoch = tf1.get_variable('epoch', [], tf.int64, tf1.zeros_initializer(), trainable=False)
    next_epoch = tf1.placeholder(tf.int64, [], name='next_epoch')
    optimizer = tf1.train.AdamOptimizer(config['learning_rate'])
    if cluster and config['sync_replicas']:
        optimizer = tf1.train.SyncReplicasOptimizer(optimizer, replicas_to_aggregate=len(cluster['worker']),
                                                    total_num_replicas=len(cluster['worker']))
    # In-graph replication: each tower runs the model on its share of the batch, on its own device.
    towers, tower_gradients = [], []
    devices = tower_devices(config)
    for i, (device, tower_input) in enumerate(zip(devices, tf.split(model_input, len(devices)))):
        with tf1.device(on_device(device)), tf1.name_scope(f'tower{i}'):
            towers.append(build_vae(tower_input, config, training=True))
            tower_gradients.append(optimizer.compute_gradients(towers[-1]['loss']))
    vae = merge_towers(towers)
    gradients = average_gradients(tower_gradients)
    finite = tf.logical_and(tf.math.is_finite(vae['loss']),
                            tf.math.is_finite(tf.linalg.global_norm([g for g, _ in gradients])))
    with tf.control_dependencies(moving_average_updates(config)):
        train_op = optimizer.apply_gradients(gradients, global_step=global_step)
    with tf.control_dependencies([train_op]):  # the step count once this step's update has been applied
        step_after_update = tf.identity(global_step.read_value())

    summaries = tf1.summary.merge([tf1.summary.scalar('loss', vae['loss']),
                                   tf1.summary.scalar('reconstruction_loss', vae['reconstruction_loss']),
                                   tf1.summary.scalar('kl', vae['kl'])])
    return {**vae, **placeholders, 'images': images, 'iterator': iterator, 'train_op': train_op, 'finite': finite,
            'global_step': global_step, 'step_after_update': step_after_update, 'epoch': epoch,
            'next_epoch': next_epoch, 'set_epoch': tf1.assign(epoch, next_epoch), 'summaries': summaries,
            'optimizer': optimizer, 'inference': build_inference_graph(config),
            'init': tf1.global_variables_initializer(), 'saver': tf1.train.Saver(max_to_keep=None)}


# ---------------------------------------------------------------- run folder

# The keys a checkpoint is tied to: another value would not restore, or would be evaluated wrongly.
ARCHITECTURE_KEYS = ('dataset', 'image_height', 'image_width', 'image_channels', 'z_dim', 'encoder_filters',
                     'encoder_strides', 'decoder_filters', 'decoder_strides', 'output_head', 'kernel_size',
                     'likelihood', 'decoder_variance', 'binarize')


def check_run_config(config):
    """Refuse a config whose architecture differs from the one the run folder's checkpoints were trained with."""
    path = os.path.join(config['run_directory'], 'config.json')
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    for key in ARCHITECTURE_KEYS:
        if key in saved and saved[key] != config[key]:
            raise utils.UserError(
                f'{config["run_directory"]} was trained with {key}={saved[key]} but the config says {config[key]}; '
                f'pass --{key} {saved[key]} to use that run, or --fresh (training) for a new run folder')


def save_run_config(config):
    path = os.path.join(config['run_directory'], 'config.json')
    with open(path + '.part', 'w') as f:
        json.dump(config, f, indent=2)
    os.replace(path + '.part', path)


def png_summary(tag, path):
    """A TensorBoard image summary holding an already written PNG."""
    from PIL import Image
    with open(path, 'rb') as f:
        encoded = f.read()
    width, height = Image.open(io.BytesIO(encoded)).size
    image = tf1.Summary.Image(encoded_image_string=encoded, height=height, width=width, colorspace=3)
    return tf1.Summary(value=[tf1.Summary.Value(tag=tag, image=image)])


def save_grids(sess, graph, config, epoch, fixed_images, latents, writer):
    """The op-real / op-recons / op-gen grids of the fixed images and latents, as PNG and in TensorBoard."""
    inference = graph['inference']
    reconstructions, generations, step = sess.run(
        [inference['reconstruction'], inference['generation'], graph['global_step']],
        {inference['images']: fixed_images, inference['z']: latents})
    for key, images in (('real_directory', fixed_images), ('recons_directory', reconstructions),
                        ('gen_directory', generations)):
        path = os.path.join(utils.run_path(config, key), f'epoch_{epoch:04d}.png')
        utils.save_grid(path, images, GRID_SIDE, GRID_SIDE, title=f'epoch {epoch}', value_range=pixel_range(config))
        writer.add_summary(png_summary(config[key], path), step)
    writer.flush()


def run_in_batches(sess, tensors, placeholder, inputs, batch_size=500):
    """sess.run(tensors) over inputs fed in batches, each output concatenated along the first axis
    (tensors: one tensor, or a list of them for a list of arrays)."""
    batches = [sess.run(tensors, {placeholder: inputs[i:i + batch_size]}) for i in range(0, len(inputs), batch_size)]
    if isinstance(tensors, list):
        return [np.concatenate(outputs) for outputs in zip(*batches)]
    return np.concatenate(batches)


def make_run_folders(config):
    for key in ('model_directory', 'log_directory'):
        try:
            os.makedirs(utils.run_path(config, key), exist_ok=True)
        except OSError as error:
            raise utils.UserError(f'cannot create {utils.run_path(config, key)} ({error.strerror or error}); '
                                  'choose a writable --run_directory')


def evaluation_set(config, data):
    """What every save looks at, made once per run: the grids' fixed images and latents, and the test images."""
    return {'grid_images': evaluation_images(config, data['grid_images'])[:GRID_SIDE * GRID_SIDE],
            'latents': fixed_latents(config, GRID_SIDE * GRID_SIDE),
            'test_images': evaluation_images(config, data['test_images'])}


def saves_after(config, epoch):
    """Whether training saves after this epoch: epoch 0, every save_every epochs, and the last."""
    return epoch % config['save_every'] == 0 or epoch == config['num_epoch'] - 1


def epoch_line(epoch, mean, images_per_second):
    """The line printed after each epoch (the benchmarks and tests read it): mean loss, reconstruction, KL."""
    return (f'epoch {epoch:3d}  loss {mean[0]:.5f}  reconstruction {mean[1]:.5f}  kl {mean[2]:.3f}  '
            f'{images_per_second:.0f} images/s')


def save_epoch(sess, graph, config, evaluation, epoch, writer):
    """After a saved epoch: checkpoint model_<epoch>, the image grids, and the test negative ELBO."""
    model_directory = utils.run_path(config, 'model_directory')
    graph['saver'].save(sess, os.path.join(model_directory, f'model_{epoch}'), write_meta_graph=False)
    save_grids(sess, graph, config, epoch, evaluation['grid_images'], evaluation['latents'], writer)
    inference = graph['inference']
    test_nelbo = run_in_batches(sess, inference['negative_elbo'], inference['images'],
                                evaluation['test_images']).mean()
    writer.add_summary(tf1.Summary(value=[tf1.Summary.Value(tag='test_negative_elbo_nats', simple_value=test_nelbo)]),
                       sess.run(graph['global_step']))
    print(f'saved model_{epoch}; test negative ELBO {test_nelbo:.2f} nats (one sample per image)')


def save_interrupted(sess, graph, config, step):
    """Checkpoint interrupted_<step> mid-epoch, then drop older interrupted_* checkpoints it supersedes."""
    model_directory = utils.run_path(config, 'model_directory')
    path = graph['saver'].save(sess, os.path.join(model_directory, f'interrupted_{step}'), write_meta_graph=False)
    for old_step, old_prefix in utils.list_checkpoints(model_directory, 'interrupted').items():
        if old_step < step:
            for file in glob.glob(old_prefix + '.*'):
                os.remove(file)
    return path


def latest_checkpoint(config):
    """(prefix, global step) of the readable checkpoint with the most training steps, or (None, 0).

    TensorFlow renames a checkpoint's .index into place last, so a write cut short leaves no .index; a
    checkpoint that still cannot be read is skipped with a warning rather than chosen.
    """
    model_directory = utils.run_path(config, 'model_directory')
    for partial in glob.glob(os.path.join(model_directory, '*.tempstate*')):
        os.remove(partial)  # the remains of a save that was killed; its .index was never written
    best = (None, 0)
    for prefix in utils.all_checkpoints(model_directory):
        try:
            step = int(tf.train.load_variable(prefix, 'global_step'))
        except (tf.errors.OpError, ValueError) as error:
            print(f'warning: skipping unreadable checkpoint {prefix} ({str(error).splitlines()[0]})')
            continue
        if best[0] is None or step > best[1]:
            best = (prefix, step)
    return best


def restore_checkpoint(sess, saver, prefix):
    """saver.restore after checking that every variable of the graph is in the checkpoint with its shape
    (the compat.v1 Saver would silently reshape a variable to the checkpoint's shape)."""
    saved = dict(tf.train.list_variables(prefix))
    for variable in sess.graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES):
        name, shape = variable.op.name, variable.shape.as_list()
        if name not in saved or list(saved[name]) != shape:
            found = f'shape {list(saved[name])}' if name in saved else 'nothing'
            raise utils.UserError(f'{prefix} does not fit the configured model: {name} has shape {shape} here but '
                                  f'{found} in the checkpoint; pass the config keys it was trained with')
    saver.restore(sess, prefix)


@contextlib.contextmanager
def stop_requests():
    """Collect SIGINT / SIGTERM in a list instead of dying mid-step; the previous handlers come back after."""
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def train(config, data):
    """Train (or resume) the run in config['run_directory'] on data['train']; returns per-epoch mean losses.

    SIGINT / SIGTERM finish the current step, save interrupted_<step> and exit with status 128 + signal.
    A non-finite loss or gradient stops training before anything non-finite is saved.
    """
    run_directory = config['run_directory']
    make_run_folders(config)
    if config['deterministic']:
        tf.config.experimental.enable_op_determinism()

    graph_container = tf.Graph()
    with graph_container.as_default():
        graph = build_training_graph(config)
        graph_container.finalize()  # a training loop that adds ops would leak memory every step: forbid it

    steps_per_epoch = len(data['train']) // config['batch_size']
    evaluation = evaluation_set(config, data)
    checkpoint, step = latest_checkpoint(config)
    if checkpoint:
        check_run_config(config)
    epoch_losses = []

    with stop_requests() as stop_signal, tf1.Session(graph=graph_container, config=session_config(config)) as sess:
        if checkpoint:
            restore_checkpoint(sess, graph['saver'], checkpoint)
            print(f'resuming {run_directory} from {checkpoint} (step {step})')
        else:
            sess.run(graph['init'])
        save_run_config(config)
        start_epoch = int(sess.run(graph['epoch']))
        # An interrupted checkpoint resumes inside its epoch, at the next batch of the same shuffled order.
        position = min(max(step - start_epoch * steps_per_epoch, 0), steps_per_epoch)
        if start_epoch >= config['num_epoch']:
            print(f'{run_directory} has trained all {config["num_epoch"]} epochs; raise --num_epoch to go on, '
                  'or pass --fresh to start a new run')
            return epoch_losses

        writer = tf1.summary.FileWriter(utils.run_path(config, 'log_directory'), graph_container)
        fetches = [graph['train_op'], graph['finite'], graph['loss'], graph['reconstruction_loss'], graph['kl']]
        for epoch in range(start_epoch, config['num_epoch']):
            # The shuffle seed depends on the epoch, so a resumed run sees the same order as an unbroken one.
            sess.run(graph['iterator'].initializer, {graph['train_data']: data['train'],
                                                     graph['shuffle_seed']: config['seed'] * 100003 + epoch,
                                                     graph['skip_batches']: position})
            totals = np.zeros(3)
            start = time.perf_counter()
            with tqdm(total=steps_per_epoch, initial=position, desc=f'epoch {epoch}', leave=False, file=sys.stdout,
                      disable=None) as bar:
                for i in range(position, steps_per_epoch):
                    step = epoch * steps_per_epoch + i
                    if step % config['summary_every'] == 0:
                        _, finite, loss, reconstruction_loss, kl, summary = sess.run(fetches + [graph['summaries']])
                        writer.add_summary(summary, step)
                    else:
                        _, finite, loss, reconstruction_loss, kl = sess.run(fetches)
                    if not finite:
                        last_good, _ = latest_checkpoint(config)
                        raise utils.UserError(
                            f'the loss or its gradients became non-finite (loss {loss}) at step {step} of epoch '
                            f'{epoch}; nothing was saved after it, the last good checkpoint is {last_good}; '
                            'lower --learning_rate and run again to resume from it')
                    totals += (loss, reconstruction_loss, kl)
                    bar.update(1)
                    bar.set_postfix(loss=f'{totals[0] / (i + 1 - position):.5f}')
                    if stop_signal:
                        path = save_interrupted(sess, graph, config, step + 1)
                        writer.close()
                        print(f'\n{signal.Signals(stop_signal[0]).name}: saved {path} after step {step + 1}; '
                              f'run the same command to resume from there')
                        raise SystemExit(128 + stop_signal[0])
            seconds = time.perf_counter() - start
            steps_run = steps_per_epoch - position  # 0 when an interrupt came after the epoch's last step
            if steps_run:
                mean = totals / steps_run
                epoch_losses.append(mean[0])
                print(epoch_line(epoch, mean, steps_run * config['batch_size'] / seconds))
            position = 0
            sess.run(graph['set_epoch'], {graph['next_epoch']: epoch + 1})
            if saves_after(config, epoch):
                save_epoch(sess, graph, config, evaluation, epoch, writer)
        writer.close()
        print(f'trained {config["num_epoch"]} epochs ({sess.run(graph["global_step"])} steps) in {run_directory}')
    return epoch_losses


# ---------------------------------------------------------------- several machines

def start_server(config, cluster):
    """This process's tf1.train.Server in the cluster (TensorFlow's gRPC runtime)."""
    job, task = config['job_name'], config['task']
    address = cluster[job][task]
    try:
        with utils.silence_stderr():
            return tf1.train.Server(tf1.train.ClusterSpec(cluster), job_name=job, task_index=task,
                                    config=session_config(config))
    except (tf.errors.OpError, ValueError) as error:
        raise utils.UserError(f'cannot start {job} task {task} on {address} ({str(error).splitlines()[0]}); is the '
                              f'port in use, or the address not this machine\'s? fix --{job}_hosts or TF_CONFIG')


def finished_queues(cluster):
    """A queue on each parameter server that every worker puts its task number in when it is done."""
    queues = []
    for task in range(len(cluster['ps'])):
        with tf1.device(f'/job:ps/task:{task}'):
            queues.append(tf1.FIFOQueue(len(cluster['worker']), tf.int32, shapes=[[]],
                                        shared_name=f'finished_workers_{task}'))
    return queues


def serve_parameters(config, cluster):
    """A parameter server: hold the variables placed here until every worker has put itself in the queue."""
    server = start_server(config, cluster)
    with tf.Graph().as_default():
        wait = finished_queues(cluster)[config['task']].dequeue_many(len(cluster['worker']))
        print(f'parameter server {config["task"]} serving on {cluster["ps"][config["task"]]}; it exits when all '
              f'{len(cluster["worker"])} workers have finished', flush=True)
        with tf1.Session(server.target) as sess:
            sess.run(wait)
    print(f'parameter server {config["task"]}: every worker finished')


def ignore_cancelled_queue_runner():
    """The chief's gradient queue runner is still waiting for the next gradients when its session closes at the
    end; closing cancels that wait, which is how it ends, not an error to print."""
    default = threading.excepthook
    threading.excepthook = lambda args: None if issubclass(args.exc_type, tf.errors.CancelledError) else default(args)


def train_on_cluster(config, data, cluster):
    """Between-graph replication: each worker builds its own graph with the variables on the parameter servers
    (replica_device_setter) and trains on its own shard of the data. With sync_replicas, every update averages
    worker_replicas gradients (a step is worker_replicas * batch_size images); without, each worker's gradient is
    applied as it comes (a step is batch_size images). The chief (worker 0) alone restores and writes checkpoints,
    summaries, grids and config.json; a worker that stops can be started again and rejoins. Returns the
    per-epoch mean losses this worker saw.
    """
    task, workers = config['task'], len(cluster['worker'])
    chief = task == 0
    # This worker's sessions see only the parameter servers and itself, not wait for the other workers.
    cluster_session_config = session_config(config)
    cluster_session_config.device_filters.extend(['/job:ps', f'/job:worker/task:{task}'])
    tf1.logging.set_verbosity(tf1.logging.ERROR)  # compat.v1's deprecation notices would bury the progress lines
    server = start_server(config, cluster)
    if chief:
        make_run_folders(config)
    if config['deterministic']:
        tf.config.experimental.enable_op_determinism()
    graph_container = tf.Graph()
    with graph_container.as_default():
        with tf1.device(tf1.train.replica_device_setter(ps_tasks=len(cluster['ps']), cluster=cluster,
                                                        worker_device=f'/job:worker/task:{task}')):
            graph = build_training_graph(config, cluster=cluster)
        finished = tf.group([queue.enqueue(task) for queue in finished_queues(cluster)])
        uninitialized = None if chief else tf1.report_uninitialized_variables(tf1.global_variables())
        # Synchronous: no tokens at the start, so the first update waits for a gradient from every worker; at the
        # end the chief hands out one token per worker, so a worker still waiting for its last update gets it.
        hooks = [graph['optimizer'].make_session_run_hook(chief, num_tokens=0)] if config['sync_replicas'] else []
        release_workers = graph['optimizer'].get_init_tokens_op(workers) if chief and config['sync_replicas'] \
            else tf.no_op()
        scaffold = tf1.train.Scaffold(
            init_op=graph['init'], saver=graph['saver'], summary_op=graph['summaries'],
            local_init_op=tf.group(tf1.train.Scaffold.default_local_init_op(), graph['iterator'].initializer),
            local_init_feed_dict={graph['train_data']: data['train'],
                                  graph['shuffle_seed']: config['seed'] * 100003 + task})

    images_per_step = config['batch_size'] * (workers if config['sync_replicas'] else 1)
    steps_per_epoch = len(data['train']) // images_per_step
    if steps_per_epoch == 0:
        raise utils.UserError(f'{len(data["train"])} training images make no step of {images_per_step} images; '
                              'lower --batch_size or train on more images')
    last_step = config['num_epoch'] * steps_per_epoch
    checkpoint, _ = latest_checkpoint(config) if chief else (None, 0)
    if checkpoint:
        check_run_config(config)
        # MonitoredTrainingSession restores the checkpoint the state file names: make it the newest readable one.
        tf1.train.update_checkpoint_state(utils.run_path(config, 'model_directory'), checkpoint)
    hooks.append(tf1.train.StopAtStepHook(last_step=last_step))
    session = lambda: tf1.train.MonitoredTrainingSession(
        master=server.target, is_chief=chief, scaffold=scaffold, hooks=hooks, config=cluster_session_config,
        checkpoint_dir=utils.run_path(config, 'model_directory') if chief else None,
        summary_dir=utils.run_path(config, 'log_directory') if chief else None,
        save_checkpoint_secs=None, save_checkpoint_steps=None, save_summaries_steps=config['summary_every'],
        save_summaries_secs=None, log_step_count_steps=None, stop_grace_period_secs=2)

    epoch_losses = []
    print(f'worker {task} of {workers} ({"chief" if chief else "not chief"}) on {cluster["worker"][task]}: '
          f'{len(data["train"])} images, {steps_per_epoch} steps of {images_per_step} images an epoch, '
          f'{"synchronous" if config["sync_replicas"] else "asynchronous"} updates', flush=True)
    if not chief:  # poll for the chief's initialisation each second (the session's own wait polls every 30 s)
        with tf1.Session(server.target, graph=graph_container, config=cluster_session_config) as sess:
            while len(sess.run(uninitialized)):
                time.sleep(1)
    ignore_cancelled_queue_runner()
    try:
        with graph_container.as_default(), session() as sess, \
                stop_requests() if chief else contextlib.nullcontext([]) as stop_signal:
            step = sess.run_step_fn(lambda step_context: step_context.session.run(graph['global_step']))
            if chief:
                save_run_config(config)
                if checkpoint:
                    print(f'resuming {config["run_directory"]} from {checkpoint} (step {step})')
            writer = tf1.summary.FileWriterCache.get(utils.run_path(config, 'log_directory')) if chief else None
            evaluation = evaluation_set(config, data) if chief else None
            fetches = [graph['train_op'], graph['finite'], graph['loss'], graph['reconstruction_loss'], graph['kl'],
                       graph['step_after_update']]
            totals, steps_run, start, steps_here = np.zeros(3), 0, time.perf_counter(), 0
            while step < last_step and not sess.should_stop():
                _, finite, loss, reconstruction_loss, kl, new_step = sess.run(fetches)
                if not finite:
                    raise utils.UserError(f'the loss or its gradients became non-finite (loss {loss}) on worker {task} '
                                          f'at step {new_step}; lower --learning_rate and start the cluster again')
                totals, steps_run, steps_here = totals + (loss, reconstruction_loss, kl), steps_run + 1, steps_here + 1
                for epoch in range(step // steps_per_epoch, new_step // steps_per_epoch):  # the epochs this step ended
                    mean = totals / steps_run
                    epoch_losses.append(mean[0])
                    images_per_second = steps_run * config['batch_size'] / (time.perf_counter() - start)
                    print(epoch_line(epoch, mean, images_per_second) + f' on worker {task}', flush=True)
                    if chief and saves_after(config, epoch):
                        def save(step_context):  # on the raw session: a save is not a training step for the hooks
                            step_context.session.run(graph['set_epoch'], {graph['next_epoch']: epoch + 1})
                            save_epoch(step_context.session, graph, config, evaluation, epoch, writer)
                        sess.run_step_fn(save)
                    totals, steps_run, start = np.zeros(3), 0, time.perf_counter()
                step = new_step
                if stop_signal:  # the chief's only: other workers stop at once, holding nothing to save
                    path = sess.run_step_fn(
                        lambda step_context: save_interrupted(step_context.session, graph, config, step))
                    restart = ' after the parameter servers (synchronous mode)' if config['sync_replicas'] else ''
                    print(f'\n{signal.Signals(stop_signal[0]).name}: saved {path} after step {step}; start the '
                          f'chief again{restart} to resume from there')
                    raise SystemExit(128 + stop_signal[0])
            sess.run_step_fn(lambda step_context: step_context.session.run(release_workers))
    except tf.errors.CancelledError as error:
        if 'sync_token_q' not in str(error):
            raise
        # A stopped chief's token queue stays closed on the parameter servers; TensorFlow cannot reopen it.
        raise utils.UserError('the parameter servers hold the token queue of a chief that stopped, and it is '
                              'closed; start the parameter servers again, then the workers (the chief resumes '
                              'from its newest checkpoint)')
    with tf1.Session(server.target, graph=graph_container, config=cluster_session_config) as sess:
        sess.run(finished)
    print(f'worker {task}: ran {steps_here} steps; the run is at step {step} of {last_step}' +
          (f' in {config["run_directory"]}' if chief else ''))
    return epoch_losses


def main(argv):
    config, options = utils.parse_command_line(argv, {'fresh': None})
    if options['fresh'] and utils.has_checkpoints(config['run_directory'], config):
        new_directory = utils.new_run_directory(config['run_directory'], config)
        print(f'--fresh: {config["run_directory"]} holds an earlier run, kept as it is; training in {new_directory} '
              f'(resume it with --run_directory {new_directory})')
        config['run_directory'] = new_directory
    elif options['fresh']:
        print(f'--fresh: {config["run_directory"]} holds no checkpoints; training there')
    cluster = utils.cluster_from_config(config)
    if cluster and config['job_name'] == 'ps':
        serve_parameters(config, cluster)
        return
    data = load_data(config)
    if cluster:
        train_on_cluster(config, data, cluster)
    else:
        train(config, data)


if __name__ == '__main__':
    utils.exit_on_user_error(lambda: main(sys.argv[1:]))
