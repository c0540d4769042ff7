"""Runs compared in TensorBoard's HParams dashboard: each training run's settings as an hparams session start in
its log folder (vae.py), and the evaluations of vae_inference.py as scalars beside it, so `tensorboard --logdir
FOLDER` over a folder of run folders lists every run with its settings and metrics.

No experiment summary is written: the dashboard infers its columns from the runs' session starts (every key any
run has, those whose values differ between runs first) and their scalars (every scalar tag is a metric column).
"""
import itertools
import os
import socket
import tempfile
import time

from tensorboard.plugins.hparams import summary as hparams_summary

import config_keys
import process
import run_folder

tf, tf1 = process.tf, process.tf1

# Where a run is and which process trains it say nothing about the model: left out of its hparams.
LEFT_OUT = config_keys.PROCESS_KEYS + config_keys.LOCATION_KEYS
_FILES = itertools.count()  # metric files written by this process: part of their names, so two never collide


def run_hparams(saved):
    """A run's config.json (saved) as hparams: its config keys but LEFT_OUT, and its preset; numbers and booleans
    as they are, lists as typed after their flag (4,8,8). A value unknown to an older config.json (None) is
    left out."""
    return {key: config_keys.flag_value(value) if isinstance(value, list) else value for key, value in saved.items()
            if (key in config_keys.KEY_TYPES or key == 'preset') and key not in LEFT_OUT and value is not None}


# The run's session start: one file, replaced whole at every start of training, named to be read before the
# run's other events files (TensorBoard keeps the first metadata it reads of a tag: the first session start).
SESSION_START_FILE = 'events.out.tfevents.0000000000.hparams'


def write_events(folder, name, summaries):
    """An events file `name` in folder holding summaries [(Summary or its bytes, step)], made by a FileWriter in a
    temporary folder and then written whole (process.write_atomically): a reader finds all of it or none."""
    with tempfile.TemporaryDirectory() as temporary:
        writer = tf1.summary.FileWriter(temporary)
        for summary, step in summaries:
            writer.add_summary(summary, step)
        writer.close()
        written, = os.listdir(temporary)
        with open(os.path.join(temporary, written), 'rb') as f:
            events = f.read()
    process.write_atomically(os.path.join(folder, name), lambda f: f.write(events))


def write_session_start(config):
    """The run's hparams (run_hparams of the config.json the chief has just written: the whole run's settings,
    whatever phase of vae.training_phases this is) as an hparams session start, SESSION_START_FILE in the run's
    log folder. A resume writes it again with config.json's values then (a changed learning rate, a raised
    num_epoch), which a TensorBoard started afterwards shows."""
    saved = run_folder.read_run_config(config) or run_folder.run_config_record(config, config.get('steps_per_epoch'))
    summary = hparams_summary.session_start_pb(run_hparams(saved)).SerializeToString()
    write_events(run_folder.run_path(config, 'log_directory'), SESSION_START_FILE, [(summary, 0)])


def write_metrics(config, epoch, prefix, values):
    """{tag: value} scalars at model_<epoch>'s global step (prefix: its checkpoint; an export's weights hold no
    step: the end of epoch <epoch>), as an events file of their own in the run's log folder (write_events): the
    HParams dashboard's metric columns, and the Scalars tab. A log folder that cannot be written is a warning: the
    evaluation's record is kept all the same."""
    step = run_folder.checkpoint_step(prefix)
    if step is None and config.get('steps_per_epoch'):
        step = (epoch + 1) * config['steps_per_epoch']
    summary = tf1.Summary(value=[tf1.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
    # Named like a FileWriter's file, after the moment it is written, with this process and a count.
    name = f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}.metrics'
    try:
        write_events(run_folder.run_path(config, 'log_directory'), name, [(summary, step or 0)])
    except process.UserError as error:
        print(f'warning: {error}; TensorBoard will not show {", ".join(values)}')
