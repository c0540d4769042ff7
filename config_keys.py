"""The config keys: each key's type, choices and range, how a run folder treats it, and what a config implies.

KEY_TYPES, CHOICES and RANGES say what a value may be, check_config what a whole config may be (the keys against
each other, the memory a training step needs, the cluster); the key groups (RUN_IDENTITY_KEYS, EPOCH_KEYS,
PROCESS_KEYS, LOCATION_KEYS, RECORD_KEYS) say what a run's config.json decides when the run is resumed or restored;
the rest is derived from a config: the pixel range, the image and encoder shapes, the decoder passes that fit in
memory, the images an update and the steps an epoch. Nothing here reads or writes a file.
"""
import math
import os

import numpy as np

from process import UserError


# The type of every config key, whatever a dict of config.py or a config.json says: the one check of a value's
# kind. A list type is [item type]. Floats accept ints (1 is 1.0); no number accepts a boolean.
KEY_TYPES = {
    'dataset': str, 'data_directory': str, 'image_height': int, 'image_width': int, 'image_channels': int,
    'binarize': bool, 'test_seed': int, 'num_train_images': int, 'num_test_images': int, 'partition_file': str,
    'celebA_crop': str, 'celebA_cache': bool, 'celebA_cache_directory': str,
    'z_dim': int, 'likelihood': str, 'kl_weight': float, 'decoder_variance': str, 'decoder_min_variance': float,
    'encoder_filters': [int], 'encoder_strides': [int], 'decoder_filters': [int], 'decoder_strides': [int],
    'output_head': str, 'kernel_size': int, 'init_stddev': float, 'bn_momentum': float, 'bn_epsilon': float,
    'iaf_depth': int, 'iaf_width': int, 'prior_flow_depth': int, 'prior_flow_width': int,
    'batch_size': int, 'num_epoch': int, 'learning_rate': float, 'learning_rate_decay': float, 'kl_schedule': str,
    'kl_warmup_epochs': int, 'kl_cycle_epochs': int, 'kl_cycle_ramp': float, 'free_bits': float,
    'clip_gradient_norm': float, 'objective': str,
    'train_samples': int, 'iwae_start_epoch': int, 'save_every': int, 'summary_every': int, 'seed': int,
    'deterministic': bool, 'num_threads': int, 'precision': str,
    'num_clones': int, 'clone_on_cpu': bool, 'worker_replicas': int, 'num_ps_tasks': int, 'job_name': str,
    'task': int, 'ps_hosts': [str], 'worker_hosts': [str], 'sync_replicas': bool,
    'run_directory': str, 'model_directory': str, 'log_directory': str, 'real_directory': str,
    'recons_directory': str, 'gen_directory': str, 'fid_cache_directory': str,
}
CHOICES = {'dataset': ('MNIST', 'celebA'), 'likelihood': ('gaussian', 'gaussian_learned', 'bernoulli'),
           'decoder_variance': ('pixel', 'global'), 'output_head': ('dense_sigmoid', 'conv_sigmoid', 'conv_tanh'),
           'precision': ('float32', 'mixed_bfloat16', 'mixed_float16'), 'celebA_crop': ('closecrop', 'resizecrop'),
           'kl_schedule': ('constant', 'linear', 'cyclical'), 'objective': ('elbo', 'iwae'),
           'job_name': ('worker', 'ps')}
MAX_FLOW_DEPTH = 32  # steps of a flow on the latents (the IAF paper's deepest: 8)
# (keys, test of a value, what the test asks for): the ranges, checked after the types.
RANGES = [
    (('z_dim', 'batch_size', 'num_epoch', 'train_samples', 'image_height', 'image_width', 'image_channels',
      'kernel_size', 'save_every', 'summary_every', 'kl_cycle_epochs', 'num_clones', 'worker_replicas',
      'iaf_width', 'prior_flow_width'),
     lambda v: v > 0, 'positive'),
    (('num_train_images', 'num_test_images', 'kl_warmup_epochs', 'iwae_start_epoch', 'num_threads',
      'num_ps_tasks', 'task', 'iaf_depth', 'prior_flow_depth'), lambda v: v >= 0, '>= 0'),
    (('learning_rate', 'init_stddev', 'bn_epsilon', 'decoder_min_variance'), lambda v: 0 < v < math.inf,
     'positive and finite'),
    (('kl_weight', 'free_bits', 'clip_gradient_norm'), lambda v: 0 <= v < math.inf, '>= 0 and finite'),
    (('kl_cycle_ramp', 'learning_rate_decay'), lambda v: 0 < v <= 1, 'in (0, 1]'),
    (('bn_momentum',), lambda v: 0 <= v < 1, 'in [0, 1)'),
    (('seed', 'test_seed'), lambda v: 0 <= v < 2 ** 32, 'in [0, 2**32)'),
    # each step is its own part of the graph (the prior's z_dim times over): 100 steps take a minute to build
    (('iaf_depth', 'prior_flow_depth'), lambda v: v <= MAX_FLOW_DEPTH, f'at most {MAX_FLOW_DEPTH} steps'),
    (('encoder_filters', 'encoder_strides', 'decoder_filters', 'decoder_strides'),
     lambda v: len(v) > 0 and min(v) > 0, 'a non-empty list of positive numbers'),
]
# Bytes of decoder activations (and their gradients) one training step may hold: train_samples * batch_size
# decoder passes must fit (decodes_per_run), so a mistyped --train_samples 5000 is refused, not a crash.
TRAINING_MEMORY = 2 ** 34


# How a run folder with checkpoints treats each key of its config.json when the run is resumed or restored.
# The keys that make a run what it is: under other values its checkpoints would not restore, or would be trained
# or scored as another model (kl_weight sets the 'gaussian' decoder's variance; test_seed the test binarisation).
RUN_IDENTITY_KEYS = ('dataset', 'image_height', 'image_width', 'image_channels', 'z_dim', 'encoder_filters',
                     'encoder_strides', 'decoder_filters', 'decoder_strides', 'output_head', 'kernel_size',
                     'likelihood', 'decoder_variance', 'decoder_min_variance', 'binarize', 'kl_weight', 'test_seed',
                     'celebA_crop', 'bn_epsilon', 'iaf_depth', 'iaf_width',
                     'prior_flow_depth', 'prior_flow_width')
# Keys added after runs were first recorded, with the value every run before them was trained with: a config.json
# without one is read as that value (an older run has no flow and clipped no gradient), never as config.py's.
LATER_KEYS = {'iaf_depth': 0, 'iaf_width': 320, 'prior_flow_depth': 0, 'prior_flow_width': 320,
              'clip_gradient_norm': 0.0}
# What an epoch is: the global step counts updates, and the epochs it stands for would move.
EPOCH_KEYS = ('batch_size', 'num_train_images')
# This process's place in the world: from config.py, the flags and TF_CONFIG, never from the run's config.json.
PROCESS_KEYS = ('num_threads', 'num_clones', 'clone_on_cpu', 'worker_replicas', 'num_ps_tasks', 'job_name', 'task',
                'ps_hosts', 'worker_hosts', 'sync_replicas', 'run_directory')
# The run folder's own subfolders, named relative to run_directory.
RUN_SUBFOLDER_KEYS = ('model_directory', 'log_directory', 'real_directory', 'recons_directory', 'gen_directory')
# Where things are (the data, the caches, the test subset): a flag moves them for this command, unrecorded.
LOCATION_KEYS = ('data_directory', 'partition_file', 'celebA_cache', 'celebA_cache_directory', 'num_test_images',
                 'fid_cache_directory', *RUN_SUBFOLDER_KEYS)
# Everything else is how the run trains (learning rate, schedules, objective, seed, ...): a flag that changes one
# on resume is applied from the resumed epoch on, printed, and recorded in config.json's 'changes'.
# config.json also records, beside the config keys: the preset it started from, the steps an epoch, the changes.
RECORD_KEYS = ('preset', 'steps_per_epoch', 'changes')
# The keys only the CelebA loader reads: a preset of another dataset may leave them out.
CELEBA_ONLY_KEYS = ('num_test_images', 'partition_file', 'celebA_crop', 'celebA_cache', 'celebA_cache_directory')


# Each key type in words: in the errors (KIND_NAMES) and as the placeholder of its flag in --help (TYPE_NAMES).
KIND_NAMES = {int: 'an integer', float: 'a number', str: 'a text', bool: 'a boolean (true or false)'}
TYPE_NAMES = {bool: 'BOOL', int: 'INT', float: 'FLOAT', str: 'TEXT', list: 'LIST'}
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32, about 1.2e-38


def checked_value(key, value, where):
    """value as KEY_TYPES[key] says (an int where a float belongs becomes a float), or a one-line error naming
    where it came from."""
    kind = KEY_TYPES[key]
    item = kind[0] if isinstance(kind, list) else kind

    def fits(v):
        if item is float:
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        return isinstance(v, item) and (item is bool or not isinstance(v, bool))
    if isinstance(kind, list) and isinstance(value, list) and all(fits(v) for v in value):
        return [float(v) if item is float else v for v in value]
    if not isinstance(kind, list) and fits(value):
        return float(value) if item is float else value
    wanted = KIND_NAMES[item] if not isinstance(kind, list) else f'a list of {KIND_NAMES[item].split(" ", 1)[1]}s'
    raise UserError(f'{key} must be {wanted}, got {value!r} in {where}; fix it there')


def check_value_types(config, where):
    return {key: checked_value(key, value, where) for key, value in config.items()}


def flag_value(value):
    """A config value as it is typed after --KEY: lists as 4,8,8, booleans as true/false."""
    if isinstance(value, list):
        return ','.join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


# TensorFlow's checkpoint reader and SavedModel loader take a path as a glob pattern: the run folder, its checkpoint
# folder and every destination a checkpoint is written to (--export, --saved_model) must hold none of these.
LITERAL_PATH = 'a path without *, ?, [ or ] (TensorFlow reads checkpoint paths as patterns)'


def is_pattern(path):
    return bool(set(str(path)) & set('*?[]'))


def check_config(config, where=None):
    """Reject values that cannot train or would train something else than asked, naming the key, where its value
    came from ('config.py', 'flag', a config.json, 'TF_CONFIG') and the fix."""
    where = where or {}

    def bad(key, requirement, value=None):
        source = where.get(key, 'config.py')
        fix = {'config.py': f"fix it in config.py or pass --{key}", 'flag': f'pass another --{key}',
               'TF_CONFIG': 'fix TF_CONFIG'}.get(source, f'fix {source} or restore it from a copy')
        shown = flag_value(config[key] if value is None else value)
        return UserError(f'{key} must be {requirement}, got {shown}{"" if source == "flag" else " in " + source}; '
                         f'{fix}')

    for key, value in list(config.items()):
        if key in KEY_TYPES:
            checked_value(key, value, where.get(key, 'config.py'))
    for key, allowed in CHOICES.items():
        if key in config and config[key] not in allowed:
            raise bad(key, f'one of {", ".join(allowed)}', repr(config[key]))
    for keys, test, requirement in RANGES:
        for key in keys:
            if key in config and not test(config[key]):
                raise bad(key, requirement)
    for key, kind in KEY_TYPES.items():
        if key not in config:
            continue
        values = config[key] if isinstance(kind, list) else [config[key]]
        if kind is int or kind == [int]:  # TensorFlow's integers are int32 (the seeds are uint32)
            if key not in ('seed', 'test_seed') and any(not -2 ** 31 <= v < 2 ** 31 for v in values):
                raise bad(key, 'below 2**31 (a 32-bit integer)')
        if kind is float:
            with np.errstate(over='ignore'):
                representable = not config[key] or FLOAT32_TINY <= abs(np.float32(config[key])) < math.inf
            if not representable:
                    raise bad(key, 'a float32 number (1e-38 to 3e38: the graph computes in float32)')
    if not config['run_directory'].strip():
        raise UserError('run_directory is empty; pass --run_directory FOLDER (it is created if missing)')
    if not os.path.basename(os.path.abspath(config['run_directory'])):  # '/': the run's files among the system's
        raise UserError(f'run_directory {config["run_directory"]} is the file system\'s root; pass --run_directory '
                        'FOLDER (it is created if missing)')
    for key in ('run_directory', 'model_directory'):
        if is_pattern(config[key]):
            raise bad(key, LITERAL_PATH, repr(config[key]))
    for key in RUN_SUBFOLDER_KEYS:  # the lock, --export and --fresh act on the run folder: its files stay in it
        parts = os.path.normpath(config[key]).split(os.sep)
        if os.path.isabs(config[key]) or '..' in parts or parts == ['.'] or not config[key].strip():
            raise bad(key, 'a folder inside the run folder (a relative path without ..)', repr(config[key]))
    if config['likelihood'] == 'gaussian' and config['kl_weight'] == 0:
        raise UserError('kl_weight 0 with likelihood gaussian makes the decoder variance kl_weight * D / 2 zero (no '
                        'ELBO to train or score); pass a positive --kl_weight, or --likelihood gaussian_learned')
    for side in ('encoder', 'decoder'):
        if len(config[f'{side}_filters']) != len(config[f'{side}_strides']):
            raise UserError(f'{side}_filters and {side}_strides need the same length, got '
                            f'{flag_value(config[side + "_filters"])} and {flag_value(config[side + "_strides"])}')
    head = config['output_head']
    if head != 'dense_sigmoid' and config['decoder_filters'][-1] != config['image_channels']:
        raise UserError(f'with output_head {head} the last of decoder_filters is the image: it must be '
                        f'image_channels={config["image_channels"]}, got {config["decoder_filters"][-1]}')
    if head != 'dense_sigmoid':
        decoded = [-(-size // int(np.prod(config['encoder_strides']))) * int(np.prod(config['decoder_strides']))
                   for size in (config['image_height'], config['image_width'])]
        if decoded != [config['image_height'], config['image_width']]:
            raise UserError(f'with output_head {head} the decoder\'s last transposed conv is the image, but its '
                            f'strides make {decoded[0]}x{decoded[1]} images, not {config["image_height"]}x'
                            f'{config["image_width"]}; fix encoder_strides / decoder_strides, or use output_head '
                            'dense_sigmoid (a dense layer maps any size to the image)')
    data_range, head_range = PIXEL_RANGES[config['dataset']], HEAD_RANGES[head]
    if head_range != data_range:
        raise UserError(f'{config["dataset"]} images are in [{data_range[0]:g}, {data_range[1]:g}] but output_head '
                        f'{head} draws them in [{head_range[0]:g}, {head_range[1]:g}]; pass --output_head '
                        f'{"conv_tanh" if data_range[0] < 0 else "dense_sigmoid or conv_sigmoid"}')
    if config['likelihood'] == 'bernoulli' and data_range != (0.0, 1.0):
        raise UserError(f'likelihood bernoulli scores pixels in [0, 1] but {config["dataset"]} images are in '
                        f'[{data_range[0]:g}, {data_range[1]:g}]; pass --likelihood gaussian or gaussian_learned')
    if config['clip_gradient_norm'] and config['precision'] == 'mixed_float16':
        raise UserError('clip_gradient_norm clips the gradient before its update, but mixed_float16 scales it by the '
                        'loss scale until then; pass --clip_gradient_norm 0, or --precision float32 or mixed_bfloat16')
    if config['batch_size'] % config['num_clones']:
        raise UserError(f'num_clones must be >= 1 and divide batch_size {config["batch_size"]}, got '
                        f'{config["num_clones"]}; fix --num_clones or --batch_size')
    decodes = config['train_samples'] * config['batch_size'] // config['num_clones']
    if decodes > decodes_per_run(config, TRAINING_MEMORY):
        raise UserError(f'train_samples {config["train_samples"]} x batch_size {config["batch_size"]} is '
                        f'{decodes} decoder passes a step (a tower), over the {decodes_per_run(config, TRAINING_MEMORY)}'
                        f' that fit in {TRAINING_MEMORY / 2 ** 30:.0f} GiB; lower --train_samples or --batch_size '
                        '(the evaluation\'s k is vae_inference.py --k)')
    weights = model_weights(config)
    if 4 * 4 * weights > TRAINING_MEMORY:  # float32 weights, their gradients and Adam's two slots
        flows = [f'{key} {config[key]}' for key in ('iaf_depth', 'iaf_width', 'prior_flow_depth', 'prior_flow_width')
                 if config[key.replace('width', 'depth')]]
        raise UserError(f'the model would have {weights:,} weights (z_dim {config["z_dim"]}, kernel_size '
                        f'{config["kernel_size"]}, filters {flag_value(config["encoder_filters"])} / '
                        f'{flag_value(config["decoder_filters"])}{"".join(", " + flow for flow in flows)}): '
                        f'{16 * weights / 2 ** 30:,.0f} GiB with their gradients and Adam\'s slots, over '
                        f'{TRAINING_MEMORY / 2 ** 30:.0f} GiB; lower --z_dim, --kernel_size'
                        f'{", the filters or the flows" if flows else " or the filters"}')
    check_cluster_keys(config)
    for key, (governor, needed) in DEPENDENT_KEYS.items():  # given, a key the run would ignore is refused
        if where.get(key) == 'flag' and config[governor] != needed:
            raise UserError(f'--{key} applies only with {governor} {needed}, and this run has {governor} '
                            f'{config[governor]}; pass --{governor} {needed} too, or leave --{key} out')
    for width, depth in (('iaf_width', 'iaf_depth'), ('prior_flow_width', 'prior_flow_depth')):
        if where.get(width) == 'flag' and not config[depth]:
            raise UserError(f'--{width} applies only with {depth} above 0, and this run has {depth} 0; pass '
                            f'--{depth} too, or leave --{width} out')


# Keys that mean something only with another key's value: {key: (that key, its value)}.
DEPENDENT_KEYS = {'kl_warmup_epochs': ('kl_schedule', 'linear'), 'kl_cycle_epochs': ('kl_schedule', 'cyclical'),
                  'kl_cycle_ramp': ('kl_schedule', 'cyclical'), 'iwae_start_epoch': ('objective', 'iwae')}


def check_cluster_keys(config):
    """The cluster keys agree with each other (TF_CONFIG, or num_ps_tasks / worker_replicas and the host lists)."""
    if config['worker_replicas'] == 1 and config['num_ps_tasks'] == 0:
        if config['task'] != 0 or config['job_name'] != 'worker' or len(config['worker_hosts']) > 1:
            raise UserError(f'{config["job_name"]} task {config["task"]} needs a cluster, but there is one worker '
                            'and no parameter server; pass --num_ps_tasks, --worker_replicas and the hosts, or set '
                            'TF_CONFIG, or leave --task and --job_name out')
        return
    if config['num_ps_tasks'] == 0:
        raise UserError(f'worker_replicas={config["worker_replicas"]} share their variables through parameter '
                        'servers; pass --num_ps_tasks 1 (or more) and their --ps_hosts')
    for job, hosts, count in (('ps', 'ps_hosts', 'num_ps_tasks'), ('worker', 'worker_hosts', 'worker_replicas')):
        if len(config[hosts]) != config[count]:
            raise UserError(f'{count}={config[count]} but {hosts} lists {len(config[hosts])} addresses '
                            f'({",".join(config[hosts]) or "none"}); pass --{hosts} host:port,... with one per '
                            f'{job} task, or set TF_CONFIG')
    size = len(config[config['job_name'] + '_hosts'])
    if not 0 <= config['task'] < size:
        raise UserError(f'task {config["task"]} is not in the {size} {config["job_name"]} tasks of the cluster; '
                        f'pass --task 0..{size - 1}')


# ---------------------------------------------------------------- what a config implies

# The pixel range of each loader's images (datasets.py scales MNIST to [0, 1], CelebA to [-1, 1]) and of each
# decoder output head: they must agree, or the grids and bits/dim are computed in the wrong range.
PIXEL_RANGES = {'MNIST': (0.0, 1.0), 'celebA': (-1.0, 1.0)}
HEAD_RANGES = {'dense_sigmoid': (0.0, 1.0), 'conv_sigmoid': (0.0, 1.0), 'conv_tanh': (-1.0, 1.0)}


def pixel_range(config):
    """(low, high) of the run's images, as the loader scales them."""
    return PIXEL_RANGES[config['dataset']]


def image_shape(config):
    """[height, width, channels] of the config's images."""
    return [config['image_height'], config['image_width'], config['image_channels']]


def encoder_output_shape(config):
    """Height, width and channels of the last encoder feature map (SAME padding rounds up)."""
    height, width = config['image_height'], config['image_width']
    for stride in config['encoder_strides']:
        height, width = -(-height // stride), -(-width // stride)
    return height, width, config['encoder_filters'][-1]


def decodes_per_run(config, memory):
    """How many decoder passes one session.run may make within `memory` bytes: each pass holds every decoder
    layer's float32 output about three times (the layer, its batch norm, its ReLU) and a few image-sized
    tensors (the tiled image, the decoded image, the squared error). 5,800 a GiB for MNIST, 170 for CelebA."""
    height, width, channels = encoder_output_shape(config)
    floats = height * width * channels
    for filters, stride in zip(config['decoder_filters'], config['decoder_strides']):
        height, width = height * stride, width * stride
        floats += height * width * filters
    pixels = int(np.prod(image_shape(config)))
    return max(1, memory // (4 * (3 * floats + 4 * pixels)))


def model_weights(config):
    """The model's weights as vae.py builds them, from the config alone: its kernels and dense matrices (biases and
    batch norm add 3.5 % to MNIST_bernoulli's 935,040, 0.5 % to celebA's 21.2 million): what bounds its memory
    before a graph is built."""
    kernel, channels = config['kernel_size'] ** 2, config['image_channels']
    weights = 0
    for filters in config['encoder_filters']:
        weights, channels = weights + kernel * channels * filters, filters
    height, width, _ = encoder_output_shape(config)
    weights += 3 * height * width * channels * config['z_dim']  # z_mean and z_std heads, the decoder's dense layer
    for filters, stride in zip(config['decoder_filters'], config['decoder_strides']):
        weights, channels = weights + kernel * channels * filters, filters
        height, width = height * stride, width * stride
    if config['output_head'] == 'dense_sigmoid':
        weights += height * width * channels * int(np.prod(image_shape(config)))
    z_dim, units = config['z_dim'], config['iaf_width']
    if config['iaf_depth']:  # the encoder's context head, then each step's MADE (autoregressive_flows.made): z and
        # the context into the first hidden layer, the second hidden layer, the two heads
        weights += int(np.prod(encoder_output_shape(config))) * units
        weights += config['iaf_depth'] * (z_dim * units + 2 * units * units + 2 * units * z_dim)
    units = config['prior_flow_width']  # each prior step's MADE: no context
    return weights + config['prior_flow_depth'] * (z_dim * units + units * units + 2 * units * z_dim)


def images_per_update(config):
    """Images in one update of the weights: a synchronous cluster averages a batch from every worker."""
    synchronous_workers = config['worker_replicas'] if config['num_ps_tasks'] and config['sync_replicas'] else 1
    return config['batch_size'] * synchronous_workers


def steps_per_epoch(config, train_images):
    """Global steps (updates of the weights) in an epoch of train_images images: what the schedules, the
    checkpoints' epochs and the curves' epoch axis count in, written once into config.json."""
    steps = train_images // images_per_update(config)
    if steps == 0:
        raise UserError(f'{train_images} training images make no step of {images_per_update(config)} images; '
                        'lower --batch_size or train on more images')
    return steps
