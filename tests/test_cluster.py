"""Several devices and machines: towers on 2 virtual CPU devices, and a loopback cluster of one parameter server
and two workers (subprocesses on free 127.0.0.1 ports), with a worker killed and started again mid-run."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import command_line
import deploy
import run_folder
import vae
import vae_inference
from conftest import MNIST_DIR, ROOT, TINY, assert_refused, run_script, subset, tiny_config
from process import UserError

tf1 = tf.compat.v1


@pytest.mark.slow  # trains for 7-11 s: the fast tier stays under 3 minutes
def test_two_towers_train_like_one_and_restore_on_one_device(tmp_path, mnist):
    data = subset(mnist, 6400)  # one epoch of 100 steps of 64 images
    one = vae.train(tiny_config(tmp_path / 'one', '--num_epoch', '1'), data)
    two = vae.train(tiny_config(tmp_path / 'two', '--num_epoch', '1', '--num_clones', '2', '--clone_on_cpu', 'true'),
                    data)
    # Same seed and global batch; the towers draw their own noise and normalise 32-image halves, so the losses
    # are close, not equal (measured: 0.07904 and 0.07914).
    assert abs(two[0] - one[0]) < 0.02 * one[0]

    moving = {}
    for run in ('one', 'two'):
        prefix = str(tmp_path / run / 'models' / 'model_0')
        moving[run] = np.concatenate([tf.train.load_variable(prefix, name).ravel()
                                      for name, _ in tf.train.list_variables(prefix) if name.endswith('moving_mean')])
    assert not np.allclose(moving['two'], 0)  # the towers' batch moments did move the averages ...
    assert np.allclose(moving['two'], moving['one'], atol=0.05)  # ... once per step, like one tower's

    sess, outputs, epoch = vae_inference.restore(tiny_config(tmp_path / 'two'))  # the default: one device
    with sess:
        reconstructions = vae_inference.reconstruct(sess, outputs, mnist['test_images'][:10])
    assert epoch == 0 and reconstructions.shape == (10, 28, 28, 1) and np.isfinite(reconstructions).all()


def test_towers_need_devices_and_a_batch_they_divide(tmp_path):
    with pytest.raises(UserError, match='num_clones=2 towers need 2 GPUs but 0 are visible; pass '
                                        '--clone_on_cpu true'):
        deploy.tower_devices(tiny_config(tmp_path, '--num_clones', '2'))
    with pytest.raises(UserError, match='num_clones must be >= 1 and divide batch_size 64'):
        tiny_config(tmp_path, '--num_clones', '3')


# 1,280 images, 64 a worker per step: 10 synchronous steps (of 128 images) an epoch, or 20 asynchronous ones.
EPOCHS = 6
CLUSTER_ARGS = TINY + ['--num_train_images', '1280', '--num_epoch', str(EPOCHS), '--save_every', '3']


def start_task(cluster, job, task, run, log, *extra):
    tf_config = json.dumps({'cluster': cluster, 'task': {'type': job, 'index': task}})
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'vae.py'), *CLUSTER_ARGS, '--run_directory', str(run),
                             *extra], cwd=ROOT, stdout=open(log, 'w'), stderr=subprocess.STDOUT,
                            env={**os.environ, 'TF_CONFIG': tf_config, 'PYTHONUNBUFFERED': '1'})


def wait_for_line(log, text, process, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if text in open(log).read():
            return
        time.sleep(0.2)
    raise AssertionError(f'{text!r} not in {log} within {timeout} s:\n{open(log).read()}')


@pytest.fixture
def processes():
    """Every process a test starts; all are killed at the end, whatever happened."""
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.slow
@pytest.mark.process  # a parameter server and two workers on loopback
@pytest.mark.parametrize('sync', ['true', 'false'])
def test_loopback_cluster_trains_and_a_killed_worker_rejoins(tmp_path, processes, sync):
    ps, worker0, worker1 = deploy.free_ports(3)
    cluster = {'ps': [f'127.0.0.1:{ps}'], 'worker': [f'127.0.0.1:{worker0}', f'127.0.0.1:{worker1}']}
    run, logs = tmp_path / 'run', {name: tmp_path / f'{name}.log' for name in ('ps', 'chief', 'worker1', 'again')}
    extra = ['--sync_replicas', sync, '--kl_schedule', 'linear', '--kl_warmup_epochs', '4']
    total_steps = EPOCHS * (10 if sync == 'true' else 20)
    processes.append(start_task(cluster, 'ps', 0, run, logs['ps'], *extra))
    processes.append(start_task(cluster, 'worker', 0, run, logs['chief'], *extra))
    processes.append(start_task(cluster, 'worker', 1, run, logs['worker1'], *extra))
    worker1 = processes[2]

    wait_for_line(logs['worker1'], 'epoch ', worker1, timeout=120)  # early on: kill worker 1, start it again
    worker1.send_signal(signal.SIGKILL)
    worker1.wait(timeout=30)
    processes.append(start_task(cluster, 'worker', 1, run, logs['again'], *extra))
    for process in processes[:2] + processes[3:]:
        process.wait(timeout=240)
    output = {name: open(log).read() for name, log in logs.items()}
    assert [p.returncode for p in processes] == [0, 0, -signal.SIGKILL, 0], output

    # Asynchronous workers finishing together may both add their last step: the run can end one step past.
    # The rejoined worker trains until the run's last step; when it joins depends on the machine, so how many
    # of the steps it ran does too (none, if the chief alone got there first).
    for name, log in (('chief', 'chief'), ('rejoined worker', 'again')):
        ran, at = re.search(r'ran (\d+) steps; the run is at step (\d+) of ', output[log]).groups()
        assert int(ran) >= (name == 'chief') and total_steps <= int(at) <= total_steps + 1, (name, output[log])
    assert 'every worker finished' in output['ps']
    # Every worker follows the KL warm-up of the global step over 4 epochs (of 10 synchronous or 20 asynchronous
    # steps). Synchronous: the weight of an epoch's last step s is exactly s / 40. Asynchronous: a worker's step
    # read the global step while the other worker was moving it on, possibly past the epoch's end, so the weight
    # lies between the epoch's first step and the next epoch's last.
    steps_per_epoch = total_steps // EPOCHS
    for name in ('chief', 'worker1', 'again'):
        for epoch, weight in re.findall(r'^epoch +(\d+) .* kl annealing (\S+)', output[name], re.M):
            last = min(1, ((int(epoch) + 1) * steps_per_epoch - 1) / (4 * steps_per_epoch))
            first, next_last = min(1, int(epoch) / 4), min(1, (int(epoch) + 2) / 4)
            assert (abs(float(weight) - last) < 1e-4 if sync == 'true' else first <= float(weight) <= next_last), \
                (name, epoch, weight, last)
    assert re.search(r'kl annealing', output['worker1'] + output['again'])
    losses = [float(line.split()[3]) for line in output['chief'].splitlines() if line.startswith('epoch ')]
    assert len(losses) == EPOCHS and losses[-1] < 0.6 * losses[0], output['chief']
    assert sorted(run_folder.list_checkpoints(run / 'models')) == [0, 3, EPOCHS - 1]  # the chief alone saved
    assert int(tf.train.load_variable(str(run / 'models' / f'model_{EPOCHS - 1}'), 'global_step')) >= total_steps

    result = run_script('vae_inference.py', *TINY, '--run_directory', run)
    assert result.returncode == 0, result.stderr
    assert 'restored' in result.stdout and f'model_{EPOCHS - 1}' in result.stdout
    # The curves' epoch axis counts the run's epochs (global steps over config.json's steps_per_epoch), not a
    # worker's batches: the loss logged every 10 steps ends in the last epoch.
    config, _ = command_line.parse_command_line([*TINY, '--run_directory', str(run)], from_run=True)
    epochs, _ = vae_inference.epoch_curves(config)['loss']
    assert EPOCHS - 1 <= epochs.max() < EPOCHS and epochs.min() == 0, epochs


@pytest.mark.slow
@pytest.mark.process  # SIGTERM to the chief of a loopback cluster
@pytest.mark.parametrize('sync', ['true', 'false'])
def test_sigterm_on_the_chief_saves_its_step_and_a_restarted_chief_resumes_there(tmp_path, processes, sync):
    ps, worker0 = deploy.free_ports(2)
    cluster = {'ps': [f'127.0.0.1:{ps}'], 'worker': [f'127.0.0.1:{worker0}']}
    run, log, extra = tmp_path / 'run', tmp_path / 'chief.log', ['--sync_replicas', sync]
    processes.append(start_task(cluster, 'ps', 0, run, tmp_path / 'ps.log', *extra))
    processes.append(start_task(cluster, 'worker', 0, run, log, *extra))
    wait_for_line(log, 'epoch   1', processes[1], timeout=120)
    processes[1].send_signal(signal.SIGTERM)
    assert processes[1].wait(timeout=60) == 128 + signal.SIGTERM
    step = int(re.search(r'SIGTERM: saved \S+interrupted_(\d+) after step', open(log).read()).group(1))
    assert 20 <= step < EPOCHS * 20 and sorted(run_folder.list_checkpoints(run / 'models', 'interrupted')) == [step]

    if sync == 'true':  # the stopped chief's token queue on the parameter server is closed for good
        processes.append(start_task(cluster, 'worker', 0, run, tmp_path / 'refused.log', *extra))
        assert processes[-1].wait(timeout=120) == 1
        assert 'error: the parameter servers hold the token queue of a chief that stopped' in \
            open(tmp_path / 'refused.log').read()
        assert list(run_folder.list_checkpoints(run / 'models', 'interrupted')) == [step]  # nothing saved over it
        processes[0].kill()
        processes[0].wait()
        processes.append(start_task(cluster, 'ps', 0, run, tmp_path / 'ps2.log', *extra))
    processes.append(start_task(cluster, 'worker', 0, run, tmp_path / 'again.log', *extra))
    assert processes[-1].wait(timeout=240) == 0, open(tmp_path / 'again.log').read()
    output = open(tmp_path / 'again.log').read()
    assert f'interrupted_{step} (step {step})' in output
    assert re.search(rf'the run is at step ({EPOCHS * 10}|{EPOCHS * 20}) of \1', output)
    assert processes[-2 if sync == 'true' else 0].wait(timeout=60) == 0  # the parameter server saw it finish


def cluster_config(monkeypatch, tf_config=None, *extra):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    if tf_config is not None:
        monkeypatch.setenv('TF_CONFIG', tf_config)
    config, _ = command_line.parse_command_line(['--data_directory', MNIST_DIR, *extra])
    return config


def test_cluster_comes_from_tf_config_or_the_host_keys(monkeypatch):
    assert deploy.cluster_from_config(cluster_config(monkeypatch)) is None  # one process by default
    tf_config = {'cluster': {'ps': ['a:1'], 'worker': ['b:2', 'c:3']}, 'task': {'type': 'worker', 'index': 1}}
    config = cluster_config(monkeypatch, json.dumps(tf_config))
    assert deploy.cluster_from_config(config) == {'ps': ['a:1'], 'worker': ['b:2', 'c:3']}
    keys = ('worker_replicas', 'num_ps_tasks', 'job_name', 'task')
    assert [config[key] for key in keys] == [2, 1, 'worker', 1]
    config = cluster_config(monkeypatch, None, '--worker_replicas', '2', '--num_ps_tasks', '1', '--ps_hosts', 'a:1',
                            '--worker_hosts', 'b:2,c:3', '--job_name', 'ps')
    assert deploy.cluster_from_config(config) == {'ps': ['a:1'], 'worker': ['b:2', 'c:3']}


@pytest.mark.parametrize('tf_config, extra, message', [
    ('{"cluster": ', [], 'TF_CONFIG is not a cluster'),
    ('{"cluster": {"worker": ["b:2"]}}', [], "TF_CONFIG is not a cluster .*KeyError"),
    (None, ['--worker_replicas', '2'], 'pass --num_ps_tasks 1'),
    (None, ['--worker_replicas', '2', '--num_ps_tasks', '1', '--ps_hosts', 'a:1', '--worker_hosts', 'b:2'],
     'worker_replicas=2 but worker_hosts lists 1 addresses'),
    (None, ['--num_ps_tasks', '1', '--ps_hosts', 'a:1', '--worker_hosts', 'b:2', '--task', '1'],
     'task 1 is not in the 1 worker tasks'),
    (None, ['--num_ps_tasks', '1', '--ps_hosts', 'a:1', '--worker_hosts', 'b:2', '--job_name', 'chief'],
     'job_name must be one of worker, ps'),
])
def test_a_wrong_cluster_is_refused_with_the_fix(monkeypatch, tf_config, extra, message):
    with pytest.raises(UserError, match=message):
        deploy.cluster_from_config(cluster_config(monkeypatch, tf_config, *extra))


def test_fresh_in_a_cluster_is_refused_before_any_task_claims_a_folder(tmp_path, trained):
    # Every task resolves --fresh: each would have claimed a new folder (R-2, R-3, ...) of its own.
    for job in ('worker', 'ps'):
        result = run_script('vae.py', *TINY, '--run_directory', trained, '--fresh', '--num_ps_tasks', '1',
                            '--ps_hosts', '127.0.0.1:1', '--worker_hosts', '127.0.0.1:2', '--job_name', job)
        assert_refused(result, '--fresh with a cluster: every task would claim a new folder of its own')
    assert not os.path.exists(f'{trained}-2')


def test_a_busy_port_is_a_one_line_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_script('vae.py', *TINY, '--run_directory', tmp_path / 'run', '--num_ps_tasks', '1',
                            '--ps_hosts', f'127.0.0.1:{port}', '--worker_hosts', '127.0.0.1:1', '--job_name', 'ps')
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f'error: cannot start ps task 0 on 127.0.0.1:{port}')
