"""Shared plumbing of vae.py, vae_inference.py, the tests and the benchmarks: TensorFlow imported quietly, the
command line, run folders and their checkpoint files, image grids, GIFs and TensorBoard image summaries.
"""
import argparse
import contextlib
import copy
import fcntl
import glob
import json
import math
import os
import re
import signal
import sys
import tempfile

import imageio.v3 as iio
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


os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's informational logging off the console
with silence_stderr():
    import tensorflow as tf
tf1 = tf.compat.v1
tf1.disable_eager_execution()  # TensorFlow 1.x-style graphs and sessions throughout


class UserError(Exception):
    """A problem the user can fix; the scripts print it as one line and exit non-zero."""


def exit_on_user_error(main):
    """Run main(); a UserError becomes `error: ...` on stderr and exit status 1, Ctrl-C a line and 130."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the scripts ignore it while TensorFlow loads
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


TYPE_NAMES = {bool: 'BOOL', int: 'INT', float: 'FLOAT', str: 'TEXT', list: 'LIST'}


def typed(key, default):
    """argparse's type= for an option typed like its default (a bad value is a one-line error)."""
    return lambda text: _parse_value(key, text, default)


def refuse(message):
    """argparse's error handler: one line and exit status 1 (through exit_on_user_error), not usage and 2."""
    raise UserError(f'{message}; --help lists the options')


def command_line_parser(config, flags, description):
    """The argparse parser of a script: its own flags ({name: (default, meaning)}, default None for a switch), then
    every config key in the groups of config.descriptions, typed and defaulted by `config` (the chosen dataset's
    dict). Options not given stay out of the parsed namespace."""
    parser = argparse.ArgumentParser(usage='%(prog)s [--dataset NAME] [--KEY VALUE ...]', description=description,
                                     argument_default=argparse.SUPPRESS,
                                     allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = refuse
    own = parser.add_argument_group(f'{parser.prog} options')
    for name, (default, meaning) in flags.items():
        if default is None:
            own.add_argument(f'--{name}', action='store_true', help=meaning)
        else:
            own.add_argument(f'--{name}', type=typed(name, default), metavar=TYPE_NAMES[type(default)],
                             help=f'{meaning} (default: {flag_value(default)})')
    for group, meanings in config_module.descriptions.items():
        arguments = parser.add_argument_group(group)
        for key, meaning in meanings.items():
            if key == 'dataset':  # the config dict to start from, which names its loader
                arguments.add_argument('--dataset', metavar='NAME', help=f'{meaning}; one of '
                                       f'{", ".join(config_module.configs)} (default: {config_module.dataset})')
            elif key in config:
                arguments.add_argument(f'--{key}', type=typed(key, config[key]), metavar=TYPE_NAMES[type(config[key])],
                                       help=f'{meaning} (default: {flag_value(config[key]) or "none"})')
    return parser


def parse_command_line(argv, flags=(), description=None, from_run=False):
    """Parse `--dataset NAME`, the script's own `flags` ({name: (default, meaning)}) and `--KEY VALUE` (or
    `--KEY=VALUE`) for any config key; `--help` lists them all with their types, defaults and meanings.

    Returns (config, options): a copy of the dataset's config dict with the options given applied, and a dict of
    the script's flags. from_run: a run folder with checkpoints describes itself (run_config), unless --fresh.
    """
    flags = dict(flags)
    dataset_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    dataset_parser.error = refuse
    dataset_parser.add_argument('--dataset')
    named = dataset_parser.parse_known_args(argv)[0].dataset
    dataset = named or config_module.dataset
    if dataset not in config_module.configs:
        raise UserError(f'unknown dataset {dataset!r}; choose one of {", ".join(config_module.configs)} '
                        f'(config.py)')
    config = copy.deepcopy(config_module.configs[dataset])
    parser = command_line_parser(config, flags, description)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        stray = next((arg for arg in unknown if arg.startswith('--')), None)
        if stray is None:
            raise UserError(f'unexpected argument {unknown[0]!r}; options look like --KEY VALUE (--help lists them)')
        raise UserError(f'unknown option {stray.split("=")[0]} for dataset {dataset}; {parser.prog} --help lists '
                        'the options')
    given = vars(namespace)
    given.pop('dataset', None)
    options = {name: given.pop(name, False if default is None else default) for name, (default, _) in flags.items()}
    config.update(given)
    if from_run and not options.get('fresh'):
        config = run_config(config, set(given) | ({'dataset'} if named else set()))
    check_config(config)
    return config, options


def check_config(config):
    """Reject values that cannot train, with the key to fix."""
    for key in ('z_dim', 'batch_size', 'num_epoch', 'train_samples', 'image_height', 'image_width', 'image_channels',
                'kernel_size', 'save_every', 'summary_every'):
        if config[key] <= 0:
            raise UserError(f'{key} must be positive, got {config[key]}; fix it in config.py or with --{key}')
    for key in ('learning_rate', 'init_stddev', 'bn_epsilon', 'kl_cycle_epochs', 'kl_cycle_ramp'):
        if not 0 < config[key] < math.inf:
            raise UserError(f'{key} must be positive and finite, got {config[key]}; fix it in config.py or with '
                            f'--{key}')
    for key in ('kl_weight', 'kl_warmup_epochs', 'free_bits', 'iwae_start_epoch'):
        if not 0 <= config[key] < math.inf:
            raise UserError(f'{key} must be >= 0 and finite, got {config[key]}; fix it with --{key}')
    if not 0 < config['kl_cycle_ramp'] <= 1 or not 0 < config['learning_rate_decay'] <= 1:
        raise UserError('kl_cycle_ramp and learning_rate_decay must be in (0, 1], got '
                        f'{config["kl_cycle_ramp"]} and {config["learning_rate_decay"]}')
    if config['likelihood'] == 'gaussian' and config['kl_weight'] == 0:
        raise UserError('kl_weight 0 with likelihood gaussian makes the decoder variance kl_weight * D / 2 zero (no '
                        'ELBO to train or score); pass a positive --kl_weight, or --likelihood gaussian_learned')
    for key in ('seed', 'test_seed'):
        if not 0 <= config[key] < 2 ** 32:
            raise UserError(f'{key} must be in [0, 2**32), got {config[key]}; fix it with --{key}')
    if not config['run_directory'].strip():
        raise UserError('run_directory is empty; pass --run_directory FOLDER (it is created if missing)')
    choices = {'likelihood': ('gaussian', 'gaussian_learned', 'bernoulli'), 'decoder_variance': ('pixel', 'global'),
               'output_head': ('dense_sigmoid', 'conv_sigmoid', 'conv_tanh'),
               'precision': ('float32', 'mixed_bfloat16', 'mixed_float16'),
               'kl_schedule': ('constant', 'linear', 'cyclical'), 'objective': ('elbo', 'iwae')}
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise UserError(f'{key} must be one of {", ".join(allowed)}, got {config[key]!r}; fix it with --{key}')
    if not 0 < config['decoder_min_variance'] < math.inf:
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
    if config['likelihood'] == 'bernoulli' and head == 'conv_tanh':
        raise UserError('likelihood bernoulli needs pixel probabilities in [0, 1]: output_head dense_sigmoid or '
                        'conv_sigmoid, not conv_tanh')
    if config['num_train_images'] < 0:
        raise UserError(f'num_train_images must be >= 0 (0 = all), got {config["num_train_images"]}')
    if config['num_clones'] < 1 or config['batch_size'] % config['num_clones']:
        raise UserError(f'num_clones must be >= 1 and divide batch_size {config["batch_size"]}, got '
                        f'{config["num_clones"]}; fix --num_clones or --batch_size')


def flag_value(value):
    """A config value as it is typed after --KEY: lists as 4,8,8, booleans as true/false."""
    if isinstance(value, list):
        return ','.join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def image_shape(config):
    """[height, width, channels] of the config's images."""
    return [config['image_height'], config['image_width'], config['image_channels']]


# ---------------------------------------------------------------- run folders and checkpoints

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


def make_run_folders(config):
    """The run's checkpoint and TensorBoard folders, or a one-line error when they cannot be made or written."""
    for key in ('model_directory', 'log_directory'):
        folder = run_path(config, key)
        for action, make in (('create', lambda: os.makedirs(folder, exist_ok=True)),
                             # a read-only folder or file system fails here rather than at the first save
                             ('write in', lambda: tempfile.TemporaryFile(dir=folder).close())):
            try:
                make()
            except OSError as error:
                raise UserError(f'cannot {action} {folder} ({error.strerror or error}); '
                                'choose a writable --run_directory') from None


@contextlib.contextmanager
def run_folder_lock(config):
    """Hold the run folder for one training process: a second one on the same folder is refused with the first's
    PID instead of overwriting its checkpoints. An flock, so the kernel frees it when the holder dies, SIGKILL
    included."""
    path = os.path.join(config['run_directory'], '.lock')
    with open(path, 'a+') as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or 'unknown'
            raise UserError(f'{config["run_directory"]} is being trained by another process (PID {holder}); wait '
                            'for it to finish, stop it, or choose another --run_directory') from None
        lock.seek(0)
        lock.truncate()
        lock.write(f'{os.getpid()}\n')
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# The keys that make a run what it is: under other values its checkpoints would not restore, or would be trained
# or scored as another model (kl_weight sets the 'gaussian' decoder's variance; test_seed the test binarisation).
RUN_IDENTITY_KEYS = ('dataset', 'image_height', 'image_width', 'image_channels', 'z_dim', 'encoder_filters',
                     'encoder_strides', 'decoder_filters', 'decoder_strides', 'output_head', 'kernel_size',
                     'likelihood', 'decoder_variance', 'decoder_min_variance', 'binarize', 'kl_weight', 'test_seed',
                     'celebA_crop')
# What a run folder with checkpoints decides for itself, whatever config.py says now: its model, its data and where
# they are, its epoch length and its layout. Flags may still move the data (data_directory, ...).
RUN_KEYS = RUN_IDENTITY_KEYS + ('data_directory', 'partition_file', 'num_test_images', 'num_train_images',
                                'batch_size', 'model_directory', 'log_directory', 'real_directory',
                                'recons_directory', 'gen_directory')


def run_config(config, given):
    """config with the run folder's own settings (RUN_KEYS, from its config.json) in place of config.py's, when the
    folder holds checkpoints. The keys in `given` (set on the command line) keep their values: check_run_config
    refuses those that contradict the run. A run of another dataset than config.py's default starts from that
    dataset's dict."""
    saved = saved_run_config(config) if has_checkpoints(config['run_directory'], config) else None
    if saved is None:
        return config
    if 'dataset' not in given and saved.get('dataset', config['dataset']) != config['dataset']:
        base = next((c for c in config_module.configs.values() if c['dataset'] == saved['dataset']), None)
        if base is not None:
            config = {**copy.deepcopy(base), **{key: config[key] for key in given},
                      'run_directory': config['run_directory']}
    return {**config, **{key: saved[key] for key in RUN_KEYS if key in saved and key in config and key not in given}}


def images_per_update(config):
    """Images in one update of the weights: a synchronous cluster averages a batch from every worker."""
    synchronous_workers = config['worker_replicas'] if config['num_ps_tasks'] and config['sync_replicas'] else 1
    return config['batch_size'] * synchronous_workers


def saved_run_config(config):
    """The run folder's config.json as a dict, None when it has none; a damaged one is a one-line error."""
    path = os.path.join(config['run_directory'], 'config.json')
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError('not a JSON object')
        return saved
    except (OSError, ValueError) as error:
        raise UserError(f'{path} is not a readable config ({error}); restore it from a copy, or delete it (the '
                        'checkpoints are then checked variable by variable)') from None


def check_run_config(config, resuming=False):
    """Refuse a config that is not the run folder's: another architecture, likelihood, kl_weight or test seed.
    Resuming training, also another number of images per update or training images: the global step counts
    updates, and the epochs it stands for would move."""
    saved = saved_run_config(config)
    if saved is None:
        return
    for key in RUN_IDENTITY_KEYS + (('num_train_images', 'batch_size') if resuming else ()):
        if key in saved and saved[key] != config[key]:
            raise UserError(
                f'{config["run_directory"]} was trained with {key}={flag_value(saved[key])} but --{key} says '
                f'{flag_value(config[key])}; '
                f'leave --{key} out to use the run\'s value, or pass --fresh (training) for a new run folder')
    if resuming and {'worker_replicas', 'num_ps_tasks', 'sync_replicas'} <= set(saved) and \
            images_per_update(saved) != images_per_update(config):
        raise UserError(f'{config["run_directory"]} was trained with {images_per_update(saved)} images an update '
                        f'({saved["worker_replicas"]} synchronous workers) but this process would make '
                        f'{images_per_update(config)}; resume it with the same cluster, or --fresh for a new run')


def save_run_config(config):
    """The run's config.json, replaced whole (written beside it, then renamed)."""
    path = os.path.join(config['run_directory'], 'config.json')
    write_atomically(path, lambda f: json.dump(config, f, indent=2), 'w')


def write_atomically(path, write, mode='wb'):
    """write(file) into path + '.part', then rename it over path: path is the old file or the whole new one.
    A failed write (a full disk, say) removes the .part and is a one-line error; path is left as it was."""
    temporary = path + '.part'
    try:
        with open(temporary, mode) as f:
            write(f)
        os.replace(temporary, path)
    except OSError as error:
        if os.path.lexists(temporary):
            os.remove(temporary)
        raise UserError(f'cannot write {path} ({error.strerror or error}); free some space or choose a writable '
                        f'--run_directory; {os.path.basename(path)} was left as it was') from None


def checkpoint_problem(prefix):
    """None when every tensor of the checkpoint reads back, else what went wrong (a truncated .data, say)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, OSError) as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def latest_checkpoint(config):
    """(prefix, global step) of the readable checkpoint with the most training steps, or (None, 0) when the
    folder has none; checkpoints that exist but none of which reads back are a one-line error.

    TensorFlow renames a checkpoint's .index into place last, so a write cut short leaves no .index. A
    checkpoint that still cannot be read whole (a truncated .data, a damaged .index) is skipped with a
    warning, and the next newest is taken.
    """
    model_directory = run_path(config, 'model_directory')
    for partial in glob.glob(os.path.join(model_directory, '*.tempstate*')):
        os.remove(partial)  # the remains of a save that was killed; its .index was never written
    candidates, problems = [], []
    for prefix in all_checkpoints(model_directory):
        try:
            candidates.append((int(tf.train.load_variable(prefix, 'global_step')), prefix))
        except (tf.errors.OpError, ValueError, IndexError) as error:
            problems.append(f'{prefix} ({str(error).strip().splitlines()[0]})')
    for step, prefix in sorted(candidates, reverse=True):
        problem = checkpoint_problem(prefix)
        if problem is None:
            for skipped in problems:
                print(f'warning: skipping unreadable checkpoint {skipped}')
            return prefix, step
        problems.append(f'{prefix} ({problem})')
    if problems:
        raise UserError(f'{model_directory} holds checkpoints but none reads back: {problems[0]}; move the folder '
                        'away to start over, or pass --fresh for a new run folder')
    return None, 0


def restore_checkpoint(sess, saver, prefix):
    """saver.restore after checking that every variable of the graph is in the checkpoint with its shape
    (the compat.v1 Saver would silently reshape a variable to the checkpoint's shape)."""
    saved = dict(tf.train.list_variables(prefix))
    for variable in sess.graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES):
        name, shape = variable.op.name, variable.shape.as_list()
        if name not in saved or list(saved[name]) != shape:
            found = f'shape {list(saved[name])}' if name in saved else 'nothing'
            raise UserError(f'{prefix} does not fit the configured model: {name} has shape {shape} here but '
                            f'{found} in the checkpoint; pass the config keys it was trained with')
    saver.restore(sess, prefix)


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
    write_atomically(path, lambda f: iio.imwrite(f, np.asarray(picture), extension='.png'))


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
    frames = [iio.imread(p)[..., :3] for p in frame_paths]
    durations = [duration_ms] * (len(frames) - 1) + [duration_ms * 3]
    write_atomically(path, lambda f: iio.imwrite(f, np.stack(frames), extension='.gif', duration=durations, loop=0))


def png_summary(tag, path):
    """A TensorBoard image summary holding an already written PNG."""
    with open(path, 'rb') as f:
        encoded = f.read()
    height, width = iio.imread(encoded, extension='.png').shape[:2]
    image = tf1.Summary.Image(encoded_image_string=encoded, height=height, width=width, colorspace=3)
    return tf1.Summary(value=[tf1.Summary.Value(tag=tag, image=image)])
