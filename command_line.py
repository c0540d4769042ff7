"""One command's configuration, resolved once: config.py's preset, the run's config.json, the flags, TF_CONFIG.

parse_command_line is the one entry, called before anything is loaded or written: the preset (config_presets),
the argparse parser of every config key (command_line_parser), a run folder's config.json under the flags
(config_from_run), the cluster of TF_CONFIG (tf_config_keys), then every value checked (config_keys.check_config).
"""
import argparse
import collections
import copy
import importlib
import json
import os
import shlex

from config_keys import (CELEBA_ONLY_KEYS, EPOCH_KEYS, KEY_TYPES, LATER_KEYS, LOCATION_KEYS, PROCESS_KEYS,
                         RECORD_KEYS, RUN_IDENTITY_KEYS, RUN_SUBFOLDER_KEYS, TYPE_NAMES, check_config,
                         check_value_types, checked_value, flag_value)
from process import UserError
from run_folder import has_checkpoints, new_run_directory, newest_step, read_run_config


# config.py's presets, as config_presets reads them.
Presets = collections.namedtuple('Presets', [
    'configs',  # {preset name: dict of every config key}: config.py's `configs`
    'default',  # the preset name taken when --dataset is not given: config.py's `dataset`
])


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
    return Presets(configs, default)


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
                                       f'{", ".join(presets.configs)} (default: {presets.default})')
            elif key in config:
                kind = KEY_TYPES[key]
                arguments.add_argument(f'--{key}', type=typed(key, config[key]),
                                       metavar=TYPE_NAMES[list if isinstance(kind, list) else kind],
                                       help=f'{meaning} (default: {flag_value(config[key]) or "none"})')
    return parser


def parse_command_line(argv, flags=(), description=None, from_run=False, training=False):
    """The configuration of this command, resolved once, before anything is loaded or written, in this order:

    1. the preset: config.py's dict named by --dataset NAME (default, from_run: the preset a run folder with
       checkpoints records in its config.json, else config.py's `dataset`);
    2. from_run, when run_directory holds checkpoints (and not --fresh): the run's config.json, which decides
       every key but PROCESS_KEYS, starting from the preset it records;
    3. the flags --KEY VALUE (--KEY=VALUE): on a run, one that contradicts RUN_IDENTITY_KEYS (and, training,
       EPOCH_KEYS) is refused; training, one that changes how the run trains is recorded in 'changes';
    4. TF_CONFIG, which gives the cluster and this process's job and task.
    Every value is checked for its type (KEY_TYPES), its range and against the others (check_config). Only then,
    with --fresh on a folder that holds a run, is the new folder claimed: created, so no other command takes it.

    Returns (config, options): the config keys plus RECORD_KEYS ('preset', 'steps_per_epoch' when the run
    recorded it, 'changes'), and a dict of the script's own flags. `--help` lists every key.
    """
    presets = config_presets()
    flags = dict(flags)
    dataset_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    dataset_parser.error = refuse
    dataset_parser.add_argument('--dataset')
    dataset_parser.add_argument('--run_directory')
    early = dataset_parser.parse_known_args(argv)[0]
    named = early.dataset
    preset = presets.default if named is None else named
    if preset not in presets.configs:
        raise UserError(f'unknown dataset {preset!r}; choose one of {", ".join(presets.configs)} (config.py)')
    inspected = early.run_directory or presets.configs[preset]['run_directory']
    if named is None and from_run and '--fresh' not in argv:  # a run knows its preset: its keys are options here
        preset = run_preset(inspected, presets, preset) or preset
    config = check_value_types(copy.deepcopy(presets.configs[preset]), 'config.py')
    config['run_directory'] = inspected  # the folder whose preset this is (another preset names another default)
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
    # --fresh on a folder that holds a run (its checkpoints, or another run's config.json): a new folder, claimed once
    # every value is checked.
    fresh = options.get('fresh') and (has_checkpoints(run_directory, config) or
                                      os.path.lexists(os.path.join(run_directory, 'config.json')))
    if options.get('fresh') and not fresh:
        print(f'--fresh: {run_directory} holds no run; training there')
    elif from_run and not fresh and has_checkpoints(run_directory, config):
        config, where, record = config_from_run(config, where, record, presets, named, training)
    config.update(tf_config_keys())
    where.update({key: 'TF_CONFIG' for key in tf_config_keys()})
    check_config(config, where)
    if options.get('fresh') and (config['num_ps_tasks'] or config['worker_replicas'] > 1):
        raise UserError('--fresh with a cluster: every task would claim a new folder of its own; pass the same new '
                        '--run_directory to every task instead')
    if fresh:
        config['run_directory'] = new_run_directory(run_directory)
        print(f'--fresh: {run_directory} holds an earlier run, kept as it is; training in {config["run_directory"]} '
              f'(resume it with --run_directory {shlex.quote(config["run_directory"])})')
    return {**config, **record}, options


def announce_changes(config):
    """Print this command's changes of a resumed run's values: those config.json does not record yet. vae.py calls
    it once it holds the run folder, so a refused command announces nothing."""
    saved = (read_run_config(config) or {}).get('changes', []) if config['changes'] else []
    for change in config['changes'][len(saved):]:
        print(f'changing {change["key"]} {flag_value(change["from"])} -> {flag_value(change["to"])} from '
              + (f'epoch {change["epoch"]}' if change['epoch'] is not None else f'step {change["step"]}'))


def run_preset(run_directory, presets, default):
    """The preset the run folder with checkpoints was trained from (its config.json's), None when it names none
    known."""
    folder = {**presets.configs[default], 'run_directory': run_directory}
    if not has_checkpoints(folder['run_directory'], folder):
        return None
    saved = read_run_config(folder) or {}
    preset = saved.get('preset')
    return preset if isinstance(preset, str) and preset in presets.configs else None


def config_from_run(config, where, record, presets, named, training):
    """Step 2 and 3 of parse_command_line for a run folder with checkpoints: the run's config.json under the flags
    (config holds the preset with the flags applied, `where` where each value came from)."""
    saved = read_run_config(config)
    if saved is None:  # checkpoints without a config.json: config.py and the flags (the restore checks shapes)
        return config, where, record
    path = os.path.join(config['run_directory'], 'config.json')
    given = {key for key, source in where.items() if source == 'flag'}
    preset = saved.get('preset')
    if preset not in presets.configs:  # an older config.json: the first preset with its loader
        preset = next((name for name, c in presets.configs.items() if c['dataset'] == saved.get('dataset')), None)
    if not named and preset is not None and preset != record['preset']:  # start from the run's own preset
        base = check_value_types(copy.deepcopy(presets.configs[preset]), 'config.py')
        config = {**base, **{key: config[key] for key in given}}
        where = {**{key: 'config.py' for key in base}, **{key: 'flag' for key in given}}
    # The model's keys decide what a checkpoint means (its decoder variance, its likelihood, its test set): one
    # config.json lacks is never taken from config.py. The CelebA keys of an MNIST run are not its model's. A key
    # added after the run was recorded had the value every run had before it.
    saved = {**LATER_KEYS, **saved}
    missing = [key for key in RUN_IDENTITY_KEYS if key not in saved and key not in given and
               not (key in CELEBA_ONLY_KEYS and saved.get('dataset', config['dataset']) != 'celebA')]
    if missing:
        raise UserError(f'{path} lacks {", ".join(missing)}, which the run was trained with; restore it from a copy, '
                        f'or pass --{missing[0]} with the value the run was trained with')
    changes = saved.get('changes', [])
    spe = saved.get('steps_per_epoch')
    if spe is not None and (not isinstance(spe, int) or isinstance(spe, bool) or spe <= 0) or \
            not isinstance(changes, list):
        raise UserError(f'{path} records steps_per_epoch {spe!r} and changes of type {type(changes).__name__}: a '
                        'damaged record (a positive integer and a list); restore it from a copy')
    # An older config.json named no preset, only its loader: its preset is then unknown (None), not guessed.
    known = saved.get('preset') if saved.get('preset') in presets.configs else (record['preset'] if named else None)
    if named and saved.get('preset') in presets.configs and saved['preset'] != named:
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
        if key not in given or (key in LOCATION_KEYS and key not in RUN_SUBFOLDER_KEYS):
            if key not in given:
                config[key], where[key] = value, path
            continue
        if config[key] == value or key in RUN_SUBFOLDER_KEYS and os.path.normpath(config[key]) == \
                os.path.normpath(value):  # models/ and ./models are models
            continue
        if key in RUN_IDENTITY_KEYS or key in RUN_SUBFOLDER_KEYS or (training and key in EPOCH_KEYS):
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
