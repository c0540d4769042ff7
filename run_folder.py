"""A run folder: its config.json, its checkpoints and its lock.

run_path names the folders inside run_directory. config.json is read (read_run_config), built
(run_config_record), written (write_run_config) and checked against this run (check_run_config_matches).
Checkpoints are listed, read back, digested, kept aside when unreadable, checked against the epoch length and
restored with every variable's shape checked. run_folder_lock keeps a second training process out.
"""
import contextlib
import errno
import fcntl
import glob
import hashlib
import itertools
import json
import os
import re
import stat
import tempfile

from config_keys import KEY_TYPES, RECORD_KEYS, RUN_IDENTITY_KEYS, checked_value, flag_value, images_per_update
import process
from process import UserError, read_text, tf, tf1, write_atomically


def run_path(config, key):
    """Path of one of the run's folders (model_directory, log_directory, ...) inside run_directory."""
    return os.path.join(config['run_directory'], config[key])


def has_checkpoints(run_directory, config):
    """Whether the run folder holds checkpoints: in the model_directory its config.json records (a run trained
    with --model_directory ckpts is found without the flag), else in config's."""
    try:
        saved = read_run_config({'run_directory': run_directory}) or {}
    except UserError:  # a damaged config.json is refused where the run's settings are read
        saved = {}
    recorded = saved.get('model_directory')
    folder = recorded if isinstance(recorded, str) and recorded.strip() else config['model_directory']
    return bool(all_checkpoints(os.path.join(run_directory, folder)))


def new_run_directory(run_directory):
    """The first of `run_directory-2`, `-3`, ... that does not exist, claimed by creating it: a path that exists (a
    run, a folder another --fresh created a moment before, a file) is passed over, so two commands started together
    never train in the same new folder."""
    base = os.path.normpath(run_directory)  # 'runs/a/' and 'runs/a/.' are runs/a: runs/a-2 beside it
    if os.path.basename(base) in ('.', '..'):  # '.', '..', 'a/..': a folder named by the path it stands for
        base = os.path.abspath(base)
    for number in itertools.count(2):
        candidate = f'{base}-{number}'
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        except OSError as error:
            raise UserError(f'cannot create {candidate} ({error.strerror or error}); choose a writable '
                            '--run_directory') from None
        return candidate


def make_folder(folder, key='run_directory'):
    """os.makedirs(folder) that is checked for writing: a file in the way, a read-only folder or file system fail
    here, with one line, rather than at the first save."""
    for action, make in (('create', lambda: os.makedirs(folder, exist_ok=True)),
                         ('write in', lambda: tempfile.TemporaryFile(dir=folder).close())):
        try:
            make()
        except OSError as error:
            raise UserError(f'cannot {action} {folder} ({error.strerror or error}); '
                            f'{process.destination_fix(folder, error)}, or choose another --{key}') from None


def make_run_folders(config):
    """The run's checkpoint and TensorBoard folders, or a one-line error when they cannot be made or written."""
    for key in ('model_directory', 'log_directory'):
        make_folder(run_path(config, key))


HELD = set()  # the run folders (real paths) this process holds: run_folder_lock inside run_folder_lock is a no-op


@contextlib.contextmanager
def run_folder_lock(config):
    """Hold the run folder for one training process: a second one on the same folder is refused with the first's
    PID instead of overwriting its checkpoints. An flock, so the kernel frees it when the holder dies, SIGKILL
    included. vae.py's main holds it from the resolution of its configuration to the end of training."""
    folder = os.path.realpath(config['run_directory'])
    if folder in HELD:
        yield
        return
    path = os.path.join(config['run_directory'], '.lock')
    try:  # never through a link, never a folder: the lock file is written (the holder's PID)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise IsADirectoryError(errno.EISDIR, 'not a regular file')
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.EISDIR):  # another user's lock, a read-only folder: keep it
            raise UserError(f'cannot use {path}, the run folder\'s lock file ({error.strerror}); '
                            f'{process.destination_fix(path, error)}') from None
        what = 'a link' if error.errno == errno.ELOOP else 'not a file'
        raise UserError(f'{path}, the run folder\'s lock file, cannot be used ({what}); remove it (no training '
                        'holds a lock that is not a file) and run again') from None
    with open(descriptor, 'a+') as lock:
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
        HELD.add(folder)
        try:
            yield
        finally:
            HELD.discard(folder)
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------- config.json

def read_run_config(config):
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


def check_run_config_matches(config):
    """Refuse to train in a folder whose config.json (with no checkpoint beside it) is another run's."""
    saved = read_run_config(config)
    if saved is None:
        return
    path = os.path.join(config['run_directory'], 'config.json')
    missing = [key for key in ('dataset', 'z_dim') if key not in saved]  # in every run's record since the first
    if missing:  # another program's config.json: never written over
        raise UserError(f'{path} is not a run\'s config.json (it has no {" or ".join(missing)}); choose another '
                        '--run_directory, or move that file away')
    for key, value in saved.items():  # a value of the wrong type is a damaged record, not one to merge into
        if key in KEY_TYPES:
            checked_value(key, value, path)
    for key in RUN_IDENTITY_KEYS:
        if key in saved and saved[key] != config[key]:
            raise UserError(f'{config["run_directory"]} holds the config.json of another run ({key}='
                            f'{flag_value(saved[key])}, here {flag_value(config[key])}) but no checkpoint; pass '
                            '--fresh for a new run folder, or move its config.json away')


def run_config_record(config, steps_per_epoch):
    """What config.json holds: every config key, then the preset, the steps an epoch and the changes."""
    return {**{key: config[key] for key in config if key in KEY_TYPES}, 'preset': config.get('preset'),
            'steps_per_epoch': steps_per_epoch, 'changes': config.get('changes', [])}


def write_run_config(config, steps_per_epoch):
    """The run's config.json, replaced whole (run_config_record); keys a person added by hand (neither config keys
    nor record keys: a note, say) are kept, after the record."""
    record = run_config_record(config, steps_per_epoch)
    record.update({key: value for key, value in (read_run_config(config) or {}).items()
                   if key not in record and key not in KEY_TYPES and key not in RECORD_KEYS})
    path = os.path.join(config['run_directory'], 'config.json')
    write_atomically(path, lambda f: json.dump(record, f, indent=2), 'w')


# ---------------------------------------------------------------- checkpoints

def list_checkpoints(model_directory, kind='model'):
    """{number: checkpoint prefix} of the complete checkpoints <kind>_<number> in a folder: model_<epoch>
    (saved after an epoch) or interrupted_<step> (saved on SIGINT / SIGTERM). The .index file is written last."""
    checkpoints = {}
    for index in glob.glob(os.path.join(glob.escape(str(model_directory)), f'{kind}_*.index')):
        # model_1 only, never model_01: two names of one number would be one checkpoint keyed by the other's files
        match = re.fullmatch(rf'{kind}_(0|[1-9]\d*)\.index', os.path.basename(index))
        if match and os.path.isfile(index):
            checkpoints[int(match.group(1))] = index[:-len('.index')]
    return dict(sorted(checkpoints.items()))


def all_checkpoints(model_directory):
    """Prefixes of every complete checkpoint in a folder, model_<epoch> and interrupted_<step> alike."""
    return list(list_checkpoints(model_directory).values()) + \
        list(list_checkpoints(model_directory, 'interrupted').values())


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
    """SHA-1 of a checkpoint's files: what identifies the weights an evaluation was made with. Files gone since
    the checkpoint was restored (moved or deleted meanwhile) are a one-line error, never the digest of nothing."""
    digest, kinds = hashlib.sha1(), set()
    try:
        for path in sorted(glob.glob(glob.escape(prefix) + '.*')):
            kind = re.fullmatch(r'\.(index|data)(-\d+-of-\d+)?', path[len(prefix):])
            if kind and (kind.group(1) == 'index') == (kind.group(2) is None):
                with open(path, 'rb') as f:
                    for block in iter(lambda: f.read(1 << 20), b''):
                        digest.update(block)
                kinds.add(kind.group(1))
    except OSError as error:
        raise UserError(f'{prefix} cannot be read now ({error.strerror or error}); restore its files, or pass '
                        '--checkpoint N for another') from None
    if kinds != {'index', 'data'}:
        raise UserError(f'{prefix} has lost its .index or .data file since it was restored (moved or deleted '
                        'meanwhile); restore them, or pass --checkpoint N for another')
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
    trained = {**config, **{key: value for key, value in (read_run_config(config) or {}).items()
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


MODEL_SCOPES = ('encoder', 'decoder', 'iaf', 'prior_flow')  # the variable scopes of vae.py's model and its flows


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
    # and the other way: a model weight the graph lacks (a flow's, say) would be dropped without a word
    graph = {variable.op.name for variable in sess.graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)}
    extra = sorted(name for name in saved if name.split('/')[0] in MODEL_SCOPES and name not in graph
                   and not re.search(r'/Adam(_\d+)?$', name))
    if extra:
        described = config and os.path.exists(os.path.join(config['run_directory'], 'config.json'))
        fix = (f'{config["run_directory"]}/config.json does not describe this checkpoint: restore the run\'s own '
               'config.json') if described else 'pass the config keys it was trained with'
        raise UserError(f'{prefix} holds {extra[0]} (and {len(extra) - 1} more weights) that the configured model '
                        f'lacks; {fix} (a flow: --iaf_depth, --prior_flow_depth)')
    saver.restore(sess, prefix)
