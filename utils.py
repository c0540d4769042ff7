"""Shared plumbing of vae.py, vae_inference.py, the tests and the benchmarks: TensorFlow imported quietly, the
configuration resolved once (config.py, the run's config.json, the flags, TF_CONFIG; every value checked), run
folders and their checkpoint files, the one way a file is written, image grids, GIFs and TensorBoard summaries.
"""
import argparse
import contextlib
import copy
import fcntl
import glob
import hashlib
import importlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw


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


@contextlib.contextmanager
def stop_requests(enabled=True):
    """Collect SIGINT / SIGTERM in a list instead of dying mid-step (training) or mid-evaluation; the previous
    handlers come back after. Not enabled: an empty list, the signals left as they are."""
    received = []
    signals = (signal.SIGINT, signal.SIGTERM) if enabled else ()
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in signals}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------- the configuration, resolved once

# The type of every config key, whatever a dict of config.py or a config.json says: the one check of a value's
# kind. A list type is [item type]. Floats accept ints (1 is 1.0); no number accepts a boolean.
KEY_TYPES = {
    'dataset': str, 'data_directory': str, 'image_height': int, 'image_width': int, 'image_channels': int,
    'binarize': bool, 'test_seed': int, 'num_train_images': int, 'num_test_images': int, 'partition_file': str,
    'celebA_crop': str, 'celebA_cache': bool, 'celebA_cache_directory': str,
    'z_dim': int, 'likelihood': str, 'kl_weight': float, 'decoder_variance': str, 'decoder_min_variance': float,
    'encoder_filters': [int], 'encoder_strides': [int], 'decoder_filters': [int], 'decoder_strides': [int],
    'output_head': str, 'kernel_size': int, 'init_stddev': float, 'bn_momentum': float, 'bn_epsilon': float,
    'batch_size': int, 'num_epoch': int, 'learning_rate': float, 'learning_rate_decay': float, 'kl_schedule': str,
    'kl_warmup_epochs': int, 'kl_cycle_epochs': int, 'kl_cycle_ramp': float, 'free_bits': float, 'objective': str,
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
# (keys, test of a value, what the test asks for): the ranges, checked after the types.
RANGES = [
    (('z_dim', 'batch_size', 'num_epoch', 'train_samples', 'image_height', 'image_width', 'image_channels',
      'kernel_size', 'save_every', 'summary_every', 'kl_cycle_epochs', 'num_clones', 'worker_replicas'),
     lambda v: v > 0, 'positive'),
    (('num_train_images', 'num_test_images', 'kl_warmup_epochs', 'iwae_start_epoch', 'num_threads',
      'num_ps_tasks', 'task'), lambda v: v >= 0, '>= 0'),
    (('learning_rate', 'init_stddev', 'bn_epsilon', 'decoder_min_variance'), lambda v: 0 < v < math.inf,
     'positive and finite'),
    (('kl_weight', 'free_bits'), lambda v: 0 <= v < math.inf, '>= 0 and finite'),
    (('kl_cycle_ramp', 'learning_rate_decay'), lambda v: 0 < v <= 1, 'in (0, 1]'),
    (('bn_momentum',), lambda v: 0 <= v < 1, 'in [0, 1)'),
    (('seed', 'test_seed'), lambda v: 0 <= v < 2 ** 32, 'in [0, 2**32)'),
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
                     'celebA_crop', 'bn_epsilon')
# What an epoch is: the global step counts updates, and the epochs it stands for would move.
EPOCH_KEYS = ('batch_size', 'num_train_images')
# This process's place in the world: from config.py, the flags and TF_CONFIG, never from the run's config.json.
PROCESS_KEYS = ('num_threads', 'num_clones', 'clone_on_cpu', 'worker_replicas', 'num_ps_tasks', 'job_name', 'task',
                'ps_hosts', 'worker_hosts', 'sync_replicas', 'run_directory')
# Where things are (the data, the caches, the test subset): a flag moves them for this command, unrecorded.
LOCATION_KEYS = ('data_directory', 'partition_file', 'celebA_cache', 'celebA_cache_directory', 'num_test_images',
                 'fid_cache_directory',
                 'model_directory', 'log_directory', 'real_directory', 'recons_directory', 'gen_directory')
# Everything else is how the run trains (learning rate, schedules, objective, seed, ...): a flag that changes one
# on resume is applied from the resumed epoch on, printed, and recorded in config.json's 'changes'.
# config.json also records, beside the config keys: the preset it started from, the steps an epoch, the changes.
RECORD_KEYS = ('preset', 'steps_per_epoch', 'changes')


def config_presets():
    """config.py's {preset name: dict} and its default preset, imported when first asked for: a config.py that
    does not import (a syntax error, say) is a one-line error, not a traceback of every script."""
    try:
        module = importlib.import_module('config')
    except Exception as error:  # whatever an edited config.py raises
        where = f' (line {error.lineno})' if getattr(error, 'lineno', None) else ''
        raise UserError(f'config.py does not load: {type(error).__name__}{where}: {error}; fix it '
                        '(git diff config.py shows your edits)') from None
    configs, default = getattr(module, 'configs', None), getattr(module, 'dataset', None)
    if not isinstance(configs, dict) or not configs or default not in configs:
        raise UserError("config.py needs a dict 'configs' of presets and 'dataset' naming one of them; restore it "
                        'with git checkout config.py')
    for name, preset in configs.items():
        missing = [key for key in KEY_TYPES if key not in preset and key not in CELEBA_ONLY_KEYS]
        unknown = [key for key in preset if key not in KEY_TYPES]
        if missing or unknown:
            raise UserError(f"config.py's preset {name} {'lacks ' + ', '.join(missing) if missing else ''}"
                            f"{' and ' if missing and unknown else ''}"
                            f"{'has unknown keys ' + ', '.join(unknown) if unknown else ''}; an older or mistyped "
                            'config.py? compare it with git diff config.py')
    return configs, default


CELEBA_ONLY_KEYS = ('num_test_images', 'partition_file', 'celebA_crop', 'celebA_cache', 'celebA_cache_directory')


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


KIND_NAMES = {int: 'an integer', float: 'a number', str: 'a text', bool: 'a boolean (true or false)'}
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32, about 1.2e-38


def check_value_types(config, where):
    return {key: checked_value(key, value, where) for key, value in config.items()}


def _parse_value(key, text, default):
    """Convert a command-line string to the key's type (KEY_TYPES; a script's own flag: its default's type)."""
    kind = KEY_TYPES.get(key, [type(default[0]) if default else str] if isinstance(default, list) else type(default))

    def convert(text, kind):
        if kind is bool:
            if text.lower() in ('1', 'true', 'yes', 'on'):
                return True
            if text.lower() in ('0', 'false', 'no', 'off'):
                return False
            raise ValueError
        return kind(text)

    try:
        if isinstance(kind, list):  # '' is the empty list; an empty item (4,,8) is a typo
            return [convert(item, kind[0]) for item in text.split(',')] if text else []
        return convert(text, kind)
    except ValueError:
        example = ','.join(str(v) for v in default) if isinstance(default, list) else default
        name = 'list' if isinstance(kind, list) else kind.__name__
        raise UserError(f'--{key} {text!r} is not a valid {name} (the default is {example}); pass a value like '
                        'that')


TYPE_NAMES = {bool: 'BOOL', int: 'INT', float: 'FLOAT', str: 'TEXT', list: 'LIST'}


def typed(key, default):
    """argparse's type= for an option typed like its key (a bad value is a one-line error)."""
    return lambda text: _parse_value(key, text, default)


def refuse(message):
    """argparse's error handler: one line and exit status 1 (through exit_on_user_error), not usage and 2."""
    raise UserError(f'{message}; --help lists the options')


def command_line_parser(config, flags, description, presets):
    """The argparse parser of a script: its own flags ({name: (default, meaning)}, default None for a switch), then
    every config key in the groups of config.descriptions, typed by KEY_TYPES and defaulted by `config` (the chosen
    preset's dict). Options not given stay out of the parsed namespace."""
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
    descriptions = getattr(importlib.import_module('config'), 'descriptions', {})
    for group, meanings in descriptions.items():
        arguments = parser.add_argument_group(group)
        for key, meaning in meanings.items():
            if key == 'dataset':  # the preset to start from, which names its loader
                arguments.add_argument('--dataset', metavar='NAME', help=f'{meaning}; one of '
                                       f'{", ".join(presets[0])} (default: {presets[1]})')
            elif key in config:
                kind = KEY_TYPES[key]
                arguments.add_argument(f'--{key}', type=typed(key, config[key]),
                                       metavar=TYPE_NAMES[list if isinstance(kind, list) else kind],
                                       help=f'{meaning} (default: {flag_value(config[key]) or "none"})')
    return parser


def parse_command_line(argv, flags=(), description=None, from_run=False, training=False):
    """The configuration of this command, resolved once, before anything is loaded or written, in this order:

    1. the preset: config.py's dict named by --dataset NAME (default: config.py's `dataset`);
    2. from_run, when run_directory holds checkpoints (and not --fresh): the run's config.json, which decides
       every key but PROCESS_KEYS, starting from the preset it records;
    3. the flags --KEY VALUE (--KEY=VALUE): on a run, one that contradicts RUN_IDENTITY_KEYS (and, training,
       EPOCH_KEYS) is refused; training, one that changes how the run trains is recorded in 'changes';
    4. TF_CONFIG, which gives the cluster and this process's job and task.
    Every value is checked for its type (KEY_TYPES), its range and against the others (check_config).

    Returns (config, options): the config keys plus RECORD_KEYS ('preset', 'steps_per_epoch' when the run
    recorded it, 'changes'), and a dict of the script's own flags. `--help` lists every key.
    """
    presets = config_presets()
    flags = dict(flags)
    dataset_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    dataset_parser.error = refuse
    dataset_parser.add_argument('--dataset')
    named = dataset_parser.parse_known_args(argv)[0].dataset
    preset = presets[1] if named is None else named
    if preset not in presets[0]:
        raise UserError(f'unknown dataset {preset!r}; choose one of {", ".join(presets[0])} (config.py)')
    config = check_value_types(copy.deepcopy(presets[0][preset]), 'config.py')
    parser = command_line_parser(config, flags, description, presets)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        stray = next((arg for arg in unknown if arg.startswith('--')), None)
        if stray is None:
            raise UserError(f'unexpected argument {unknown[0]!r}; options look like --KEY VALUE (--help lists them)')
        raise UserError(f'unknown option {stray.split("=")[0]} for dataset {preset}; {parser.prog} --help lists '
                        'the options')
    given = vars(namespace)
    given.pop('dataset', None)
    options = {name: given.pop(name, False if default is None else default) for name, (default, _) in flags.items()}
    where = {key: 'config.py' for key in config}
    config.update(given)
    where.update({key: 'flag' for key in given})
    record = {'preset': preset, 'changes': []}
    run_directory = config['run_directory']
    if options.get('fresh') and has_checkpoints(run_directory, config):
        config['run_directory'] = new_run_directory(run_directory, config)
        print(f'--fresh: {run_directory} holds an earlier run, kept as it is; training in '
              f'{config["run_directory"]} (resume it with --run_directory {config["run_directory"]})')
    elif options.get('fresh'):
        print(f'--fresh: {run_directory} holds no checkpoints; training there')
    elif from_run and has_checkpoints(run_directory, config):
        config, where, record = run_config(config, where, record, presets, named, training)
    saved_changes = (saved_run_config(config) or {}).get('changes', []) if record['changes'] else []
    config.update(tf_config_keys())
    where.update({key: 'TF_CONFIG' for key in tf_config_keys()})
    check_config(config, where)
    for change in record['changes'][len(saved_changes):]:  # this command's, once every value passed its check
        print(f'changing {change["key"]} {flag_value(change["from"])} -> {flag_value(change["to"])} from '
              + (f'epoch {change["epoch"]}' if change['epoch'] is not None else f'step {change["step"]}'))
    return {**config, **record}, options


def run_config(config, where, record, presets, named, training):
    """Step 2 and 3 of parse_command_line for a run folder with checkpoints: the run's config.json under the flags
    (config holds the preset with the flags applied, `where` where each value came from)."""
    saved = saved_run_config(config)
    if saved is None:  # checkpoints without a config.json: config.py and the flags (the restore checks shapes)
        return config, where, record
    path = os.path.join(config['run_directory'], 'config.json')
    given = {key for key, source in where.items() if source == 'flag'}
    preset = saved.get('preset')
    if preset not in presets[0]:  # an older config.json: the first preset with its loader
        preset = next((name for name, c in presets[0].items() if c['dataset'] == saved.get('dataset')), None)
    if not named and preset is not None and preset != record['preset']:  # start from the run's own preset
        base = check_value_types(copy.deepcopy(presets[0][preset]), 'config.py')
        config = {**base, **{key: config[key] for key in given}}
        where = {**{key: 'config.py' for key in base}, **{key: 'flag' for key in given}}
    changes = saved.get('changes', [])
    spe = saved.get('steps_per_epoch')
    if spe is not None and (not isinstance(spe, int) or isinstance(spe, bool) or spe <= 0) or \
            not isinstance(changes, list):
        raise UserError(f'{path} records steps_per_epoch {spe!r} and changes of type {type(changes).__name__}: a '
                        'damaged record (a positive integer and a list); restore it from a copy')
    # An older config.json named no preset, only its loader: its preset is then unknown (None), not guessed.
    known = saved.get('preset') if saved.get('preset') in presets[0] else (record['preset'] if named else None)
    if named and saved.get('preset') in presets[0] and saved['preset'] != named:
        raise UserError(f'{config["run_directory"]} was trained from preset {saved["preset"]} but --dataset says '
                        f'{named}; leave --dataset out to use the run\'s, or pass --fresh (training) for a new run')
    record = {'preset': known, 'changes': list(changes)}
    if spe is not None:
        record['steps_per_epoch'] = spe
    resumed_step = newest_step(config) if training else None
    for key, value in saved.items():
        if key in RECORD_KEYS or key in PROCESS_KEYS or key not in KEY_TYPES:
            continue
        value = checked_value(key, value, path)
        if key not in given or key in LOCATION_KEYS:
            if key not in given:
                config[key], where[key] = value, path
            continue
        if config[key] == value:
            continue
        if key in RUN_IDENTITY_KEYS or (training and key in EPOCH_KEYS):
            raise UserError(f'{config["run_directory"]} was trained with {key}={flag_value(value)} but --{key} says '
                            f'{flag_value(config[key])}; leave --{key} out to use the run\'s value, or pass --fresh '
                            '(training) for a new run folder')
        if training:
            epoch = resumed_step // record['steps_per_epoch'] if 'steps_per_epoch' in record else None
            record['changes'].append({'key': key, 'from': value, 'to': config[key], 'epoch': epoch,
                                      'step': resumed_step})
    if training:  # a key an older config.json lacks: what it was is unknown, what it is now is recorded
        epoch = resumed_step // record['steps_per_epoch'] if 'steps_per_epoch' in record else None
        for key in sorted(given - set(saved) - set(RUN_IDENTITY_KEYS + EPOCH_KEYS + PROCESS_KEYS + LOCATION_KEYS)):
            record['changes'].append({'key': key, 'from': None, 'to': config[key], 'epoch': epoch,
                                      'step': resumed_step})
    return config, where, record


def tf_config_keys():
    """The cluster keys TF_CONFIG sets (the standard {"cluster": {...}, "task": {"type": ..., "index": ...}}
    variable), {} when it is not set."""
    if not os.environ.get('TF_CONFIG'):
        return {}
    try:
        tf_config = json.loads(os.environ['TF_CONFIG'])
        jobs, index = tf_config['cluster'], tf_config['task']['index']
        if set(jobs) - {'ps', 'worker'} or not all(isinstance(hosts, list) for hosts in jobs.values()) or \
                not isinstance(index, int) or isinstance(index, bool):
            raise TypeError('its cluster must be lists of host:port for the jobs ps and worker, its task index an '
                            'integer')
        cluster = {job: list(jobs.get(job, [])) for job in ('ps', 'worker')}
        keys = {'job_name': str(tf_config['task']['type']), 'task': index,
                'ps_hosts': [str(host) for host in cluster['ps']],
                'worker_hosts': [str(host) for host in cluster['worker']]}
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        raise UserError(f'TF_CONFIG is not a cluster ({type(error).__name__}: {error}); set it like '
                        '{"cluster": {"ps": ["host:port"], "worker": ["host:port", ...]}, '
                        '"task": {"type": "worker", "index": 0}}') from None
    return {**keys, 'num_ps_tasks': len(keys['ps_hosts']), 'worker_replicas': len(keys['worker_hosts'])}


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
    for key in ('run_directory', 'model_directory'):
        if set(config[key]) & set('*?[]'):  # TensorFlow's checkpoint reader takes a path as a glob pattern
            raise bad(key, 'a path without *, ?, [ or ] (TensorFlow reads checkpoint paths as patterns)',
                      repr(config[key]))
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
    if config['batch_size'] % config['num_clones']:
        raise UserError(f'num_clones must be >= 1 and divide batch_size {config["batch_size"]}, got '
                        f'{config["num_clones"]}; fix --num_clones or --batch_size')
    decodes = config['train_samples'] * config['batch_size'] // config['num_clones']
    if decodes > decodes_per_run(config, TRAINING_MEMORY):
        raise UserError(f'train_samples {config["train_samples"]} x batch_size {config["batch_size"]} is '
                        f'{decodes} decoder passes a step (a tower), over the {decodes_per_run(config, TRAINING_MEMORY)}'
                        f' that fit in {TRAINING_MEMORY / 2 ** 30:.0f} GiB; lower --train_samples or --batch_size '
                        '(the evaluation\'s k is vae_inference.py --k)')
    check_cluster_keys(config)


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


# The pixel range of each loader's images (datasets.py scales MNIST to [0, 1], CelebA to [-1, 1]) and of each
# decoder output head: they must agree, or the grids and bits/dim are computed in the wrong range.
PIXEL_RANGES = {'MNIST': (0.0, 1.0), 'celebA': (-1.0, 1.0)}
HEAD_RANGES = {'dense_sigmoid': (0.0, 1.0), 'conv_sigmoid': (0.0, 1.0), 'conv_tanh': (-1.0, 1.0)}


def pixel_range(config):
    """(low, high) of the run's images, as the loader scales them."""
    return PIXEL_RANGES[config['dataset']]


def flag_value(value):
    """A config value as it is typed after --KEY: lists as 4,8,8, booleans as true/false."""
    if isinstance(value, list):
        return ','.join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


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


# ---------------------------------------------------------------- run folders and checkpoints

def run_path(config, key):
    """Path of one of the run's folders (model_directory, log_directory, ...) inside run_directory."""
    return os.path.join(config['run_directory'], config[key])


def has_checkpoints(run_directory, config):
    return bool(all_checkpoints(os.path.join(run_directory, config['model_directory'])))


def new_run_directory(run_directory, config):
    """The first of `run_directory`, `run_directory-2`, `-3`, ... that holds no run (checkpoints or config.json)."""
    candidate, number = run_directory, 1
    while has_checkpoints(candidate, config) or os.path.lexists(os.path.join(candidate, 'config.json')):
        number += 1
        candidate = f'{run_directory.rstrip(os.sep)}-{number}'
    return candidate


def list_checkpoints(model_directory, kind='model'):
    """{number: checkpoint prefix} of the complete checkpoints <kind>_<number> in a folder: model_<epoch>
    (saved after an epoch) or interrupted_<step> (saved on SIGINT / SIGTERM). The .index file is written last."""
    checkpoints = {}
    for index in glob.glob(os.path.join(glob.escape(str(model_directory)), f'{kind}_*.index')):
        match = re.fullmatch(rf'{kind}_(\d+)\.index', os.path.basename(index))
        if match and os.path.isfile(index):
            checkpoints[int(match.group(1))] = index[:-len('.index')]
    return dict(sorted(checkpoints.items()))


def all_checkpoints(model_directory):
    """Prefixes of every complete checkpoint in a folder, model_<epoch> and interrupted_<step> alike."""
    return list(list_checkpoints(model_directory).values()) + \
        list(list_checkpoints(model_directory, 'interrupted').values())


def make_folder(folder, key='run_directory'):
    """os.makedirs(folder) that is checked for writing: a file in the way, a read-only folder or file system fail
    here, with one line, rather than at the first save."""
    for action, make in (('create', lambda: os.makedirs(folder, exist_ok=True)),
                         ('write in', lambda: tempfile.TemporaryFile(dir=folder).close())):
        try:
            make()
        except OSError as error:
            raise UserError(f'cannot {action} {folder} ({error.strerror or error}); choose a writable '
                            f'--{key}') from None


def make_run_folders(config):
    """The run's checkpoint and TensorBoard folders, or a one-line error when they cannot be made or written."""
    for key in ('model_directory', 'log_directory'):
        make_folder(run_path(config, key))


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


def saved_run_config(config):
    """The run folder's config.json as a dict, None when it has none; a damaged one is a one-line error."""
    path = os.path.join(config['run_directory'], 'config.json')
    if not os.path.lexists(path):
        return None
    try:
        saved = json.loads(read_text(path, 'config.json'))
        if not isinstance(saved, dict):
            raise ValueError('not a JSON object')
        return saved
    except ValueError as error:
        raise UserError(f'{path} is not a readable config ({error}); restore it from a copy, or delete it (the '
                        'checkpoints are then checked variable by variable)') from None


def check_run_config(config):
    """Refuse to train in a folder whose config.json (with no checkpoint beside it) is another run's."""
    saved = saved_run_config(config)
    if saved is None:
        return
    for key in RUN_IDENTITY_KEYS:
        if key in saved and saved[key] != config[key]:
            raise UserError(f'{config["run_directory"]} holds the config.json of another run ({key}='
                            f'{flag_value(saved[key])}, here {flag_value(config[key])}) but no checkpoint; pass '
                            '--fresh for a new run folder, or move its config.json away')


def run_record(config, steps_per_epoch):
    """What config.json holds: every config key, then the preset, the steps an epoch and the changes."""
    return {**{key: config[key] for key in config if key in KEY_TYPES}, 'preset': config.get('preset'),
            'steps_per_epoch': steps_per_epoch, 'changes': config.get('changes', [])}


def save_run_config(config, steps_per_epoch):
    """The run's config.json, replaced whole (run_record)."""
    record = run_record(config, steps_per_epoch)
    path = os.path.join(config['run_directory'], 'config.json')
    write_atomically(path, lambda f: json.dump(record, f, indent=2), 'w')


UMASK = os.umask(0o022)
os.umask(UMASK)


def write_atomically(path, write, mode='wb'):
    """The one way a file is written: write(file) into a temporary file of a unique name in path's folder,
    flushed to disk, then renamed over path, so a reader finds the old file or the whole new one, and two writers
    never share a temporary file. A failure (a full disk, a read-only folder, an interruption, a bad frame)
    removes the temporary file and leaves path as it was; an OSError is a one-line error."""
    folder, name = os.path.dirname(path) or '.', os.path.basename(path)
    temporary = None
    try:
        os.makedirs(folder, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f'.{name}.', suffix='.part')
        with os.fdopen(descriptor, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~UMASK)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary:
            with contextlib.suppress(OSError):
                os.remove(temporary)
        if isinstance(error, OSError):
            raise UserError(f'cannot write {path} ({error.strerror or error}); free some space or choose a '
                            f'writable folder; {name} was left as it was') from None
        raise


def write_folder_atomically(destination, build):
    """build(folder) fills a new folder beside destination, which is then renamed into place: destination is the
    whole result or absent, whatever happens (a full disk, Ctrl-C, SIGKILL: a hidden .<name>.*.part beside it).
    destination must be new or an empty folder."""
    if os.path.lexists(destination) and (not os.path.isdir(destination) or os.path.islink(destination)
                                         or os.listdir(destination)):
        what = 'a symbolic link' if os.path.islink(destination) else \
            'a non-empty folder' if os.path.isdir(destination) else 'a file'
        raise UserError(f'{destination} is {what}; choose a new or empty folder')
    parent, name = os.path.split(os.path.abspath(destination))
    temporary = None
    try:
        os.makedirs(parent, exist_ok=True)
        temporary = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.', suffix='.part')
        os.chmod(temporary, 0o777 & ~UMASK)
        build(temporary)
        if os.path.isdir(destination):
            os.rmdir(destination)
        os.rename(temporary, destination)
    except BaseException as error:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, (OSError, tf.errors.OpError)):
            message = getattr(error, 'strerror', None) or getattr(error, 'message', None) or str(error)
            raise UserError(f'cannot write {destination} ({message.strip().splitlines()[0]}); free some space or '
                            'choose a writable folder; nothing was written') from None
        raise


def read_text(path, what):
    """The whole of a small text file (UTF-8), or a one-line error saying what is wrong with it: missing, a
    folder, unreadable, binary or in another encoding."""
    try:
        with open(path, 'rb') as f:
            data = f.read(1 << 24)
        if b'\0' in data:
            raise UnicodeError('it holds NUL bytes: a binary file, or UTF-16')
        return data.decode('utf-8')
    except (OSError, UnicodeError) as error:
        reason = 'it is a folder' if os.path.isdir(path) else getattr(error, 'strerror', None) or \
            (str(error) if isinstance(error, UnicodeError) and 'NUL' in str(error) else 'not UTF-8 text')
        raise UserError(f'{path} is not a readable {what} ({reason}); fix or replace it') from None


def checkpoint_problem(prefix):
    """None when every tensor of the checkpoint reads back, else what went wrong (a truncated .data, say)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, OSError) as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def keep_aside(prefix):
    """Rename a checkpoint's files <prefix>.* to <prefix>-unreadable[-k].*, out of the checkpoint listing but kept;
    returns the new prefix."""
    number, aside = 1, f'{prefix}-unreadable'
    while glob.glob(glob.escape(aside) + '.*'):
        number += 1
        aside = f'{prefix}-unreadable-{number}'
    for path in glob.glob(glob.escape(prefix) + '.*'):
        os.replace(path, aside + path[len(prefix):])
    return aside


def checkpoint_step(prefix):
    """The global step a checkpoint holds; None for weights only (an export) or one that does not read."""
    try:
        return int(tf.train.load_variable(prefix, 'global_step'))
    except (tf.errors.OpError, ValueError, IndexError, OSError):
        return None


def checkpoint_digest(prefix):
    """SHA-1 of a checkpoint's files: what identifies the weights an evaluation was made with."""
    digest = hashlib.sha1()
    for path in sorted(glob.glob(glob.escape(prefix) + '.*')):
        if re.fullmatch(r'\.(index|data-\d+-of-\d+)', path[len(prefix):]):
            with open(path, 'rb') as f:
                for block in iter(lambda: f.read(1 << 20), b''):
                    digest.update(block)
    return digest.hexdigest()


def newest_step(config):
    """The most global steps of the run's checkpoints, where training resumes (a one-line error for weights
    only: an --export is for restoring, not for training on)."""
    steps = [checkpoint_step(prefix) for prefix in all_checkpoints(run_path(config, 'model_directory'))]
    if steps and all(step is None for step in steps) and all(checkpoint_problem(prefix) is None for prefix in
                                                             all_checkpoints(run_path(config, 'model_directory'))):
        raise UserError(f'{config["run_directory"]} holds weights only (no optimizer state or step: an --export); '
                        'it cannot be trained on. Restore it with vae_inference.py, or train with --fresh')
    return max([step for step in steps if step is not None], default=0)


def check_epoch_length(config, steps_per_epoch=None):
    """Refuse a run whose checkpoints count another epoch than steps_per_epoch (training's; for inference, the
    one config.json recorded): config.json's steps_per_epoch, and each model_<N>'s global step, which ends epoch
    N: (N + 1) * steps_per_epoch, or more on an asynchronous cluster, whose other workers move the step on while
    the chief saves. A model_<N> copied in from another run is refused by name, so training and
    inference agree on the newest checkpoint."""
    recorded = config.get('steps_per_epoch')
    if steps_per_epoch is not None and recorded is not None and recorded != steps_per_epoch:
        raise UserError(f'{config["run_directory"]} was trained with {recorded} steps an epoch, this run would make '
                        f'{steps_per_epoch} (batch_size {config["batch_size"]}, {images_per_update(config)} images an '
                        'update); resume it with the run\'s batch_size, num_train_images and cluster, or --fresh')
    steps_per_epoch = steps_per_epoch or recorded
    if steps_per_epoch is None:  # a folder from before config.json recorded it, restored for inference
        return
    trained = {**config, **{key: value for key, value in (saved_run_config(config) or {}).items()
                            if key in ('num_ps_tasks', 'sync_replicas')}}
    asynchronous = trained['num_ps_tasks'] > 0 and not trained['sync_replicas']
    for epoch, prefix in list_checkpoints(run_path(config, 'model_directory')).items():
        step = checkpoint_step(prefix)
        if step is not None and (step // steps_per_epoch < epoch + 1 or
                                 not asynchronous and step // steps_per_epoch > epoch + 1):
            raise UserError(f'{prefix} holds step {step}, not the end of epoch {epoch} at {steps_per_epoch} steps '
                            f'an epoch ({(epoch + 1) * steps_per_epoch}): it was trained with another batch_size or '
                            'num_train_images, or is another run\'s; resume with the run\'s settings, or move it away')


def latest_checkpoint(config):
    """(prefix, global step) of the readable checkpoint with the most training steps, or (None, 0) when the
    folder has none; checkpoints that exist but none of which reads back are a one-line error.

    TensorFlow renames a checkpoint's .index into place last, so a write cut short leaves no .index. A
    checkpoint that still cannot be read whole (a truncated .data, a damaged .index) is skipped with a
    warning, and the next newest is taken.
    """
    model_directory = run_path(config, 'model_directory')
    for partial in glob.glob(os.path.join(glob.escape(model_directory), '*.tempstate*')):
        with contextlib.suppress(OSError):
            os.remove(partial)  # the remains of a save that was killed; its .index was never written
    candidates, problems = [], []
    for prefix in all_checkpoints(model_directory):
        step = checkpoint_step(prefix)
        if step is None:
            problems.append(f'{prefix} ({checkpoint_problem(prefix) or "no global step"})')
        else:
            candidates.append((step, prefix))
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


def restore_checkpoint(sess, saver, prefix, config=None):
    """saver.restore after checking that every variable of the graph is in the checkpoint with its shape
    (the compat.v1 Saver would silently reshape a variable to the checkpoint's shape)."""
    saved = dict(tf.train.list_variables(prefix))
    for variable in sess.graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES):
        name, shape = variable.op.name, variable.shape.as_list()
        if name not in saved or list(saved[name]) != shape:
            found = f'shape {list(saved[name])}' if name in saved else 'nothing'
            described = config and os.path.exists(os.path.join(config['run_directory'], 'config.json'))
            fix = (f'{config["run_directory"]}/config.json does not describe this checkpoint: restore the run\'s own '
                   'config.json, or move it away and pass the keys the checkpoint was trained with') if described \
                else 'pass the config keys it was trained with'
            raise UserError(f'{prefix} does not fit the configured model: {name} has shape {shape} here but '
                            f'{found} in the checkpoint; {fix}')
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
    write_atomically(path, lambda f: iio.imwrite(f, np.asarray(picture), extension='.png'))


def epoch_frames(folder):
    """[(epoch, path)] of the epoch_<N>.png frames in folder, in epoch order."""
    frames = []
    for path in glob.glob(os.path.join(glob.escape(str(folder)), 'epoch_*.png')):
        match = re.fullmatch(r'epoch_(\d+)\.png', os.path.basename(path))
        if match:
            frames.append((int(match.group(1)), path))
    return sorted(frames)


def save_gif(path, frame_paths, duration_ms=400):
    """Assemble PNG frames (one or more, all of one size) into a looping GIF; the last frame is held three times
    as long. A frame of another size (left by another run, say) is a one-line error naming it."""
    frames = []
    for frame in frame_paths:
        try:
            frames.append(np.asarray(Image.open(frame).convert('RGB')))
        except (OSError, ValueError) as error:
            raise UserError(f'{frame} is not a readable PNG frame ({error}); delete it') from None
        if frames[-1].shape != frames[0].shape:
            raise UserError(f'{frame} is {frames[-1].shape[1]}x{frames[-1].shape[0]} but {frame_paths[0]} is '
                            f'{frames[0].shape[1]}x{frames[0].shape[0]}: frames of two runs; move the odd ones away')
    durations = [duration_ms] * (len(frames) - 1) + [duration_ms * 3]
    # Pillow takes one duration for a single frame, a list for several.
    duration = durations if len(frames) > 1 else durations[0]
    write_atomically(path, lambda f: iio.imwrite(f, np.stack(frames), extension='.gif', duration=duration, loop=0))


def save_figure(path, figure, dpi=100):
    """A matplotlib figure as a PNG, through write_atomically."""
    write_atomically(path, lambda f: figure.savefig(f, format='png', dpi=dpi))


def png_summary(tag, path):
    """A TensorBoard image summary holding an already written PNG."""
    with open(path, 'rb') as f:
        encoded = f.read()
    height, width = iio.imread(encoded, extension='.png').shape[:2]
    image = tf1.Summary.Image(encoded_image_string=encoded, height=height, width=width, colorspace=3)
    return tf1.Summary(value=[tf1.Summary.Value(tag=tag, image=image)])
