"""Crash safety: SIGKILL at random moments and during checkpoint writes, SIGINT / SIGTERM, non-finite losses."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

import run_folder
import vae
from conftest import ROOT, TINY, run_script, subset, tiny_config
from process import UserError

# 12 steps an epoch, 4 epochs, a checkpoint after each: 48 steps in all when nothing goes wrong.
STEPS_PER_EPOCH = 12
ARGS = TINY + ['--batch_size', '1000', '--num_train_images', str(1000 * STEPS_PER_EPOCH), '--num_epoch', '4',
               '--save_every', '1']
TOTAL_STEPS = 4 * STEPS_PER_EPOCH


def start_training(run):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'vae.py'), *ARGS, '--run_directory', str(run)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def complete_checkpoint_steps(run):
    """Global steps of the checkpoints on disk that have an .index (complete by construction) and read back."""
    return [int(tf.train.load_variable(prefix, 'global_step'))
            for prefix in run_folder.all_checkpoints(os.path.join(run, 'models'))]


def resumed_step(output):
    for line in output.splitlines():
        if line.startswith('resuming'):
            return int(line.rsplit('(step ', 1)[1].rstrip(')'))
    return 0


def temporary_files(run):
    model_directory = os.path.join(run, 'models')
    return {f for f in os.listdir(model_directory) if '.tempstate' in f} if os.path.isdir(model_directory) else set()


def wait_for_checkpoint_write(run, timeout, stale):
    """Poll until a checkpoint is being written (a .tempstate file not in `stale`, the leftovers of a write killed
    in an earlier round, exists); True if one was seen."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if temporary_files(run) - stale:
            return True
        time.sleep(0.0005)
    return False


@pytest.mark.crash
@pytest.mark.slow
@pytest.mark.process  # SIGKILL to training processes
def test_sigkill_at_random_moments_never_loses_more_than_the_last_checkpoint(tmp_path):
    run = tmp_path / 'run'
    rng = random.Random(0)
    rounds = resumed_correctly = killed_mid_write = 0
    expected_step = 0  # the step of the newest complete checkpoint when the last process died
    finished = False
    while rounds < 6 and not finished:  # three kills at a random line, three during a checkpoint write
        stale = temporary_files(run)
        process = start_training(run)
        if rounds % 2:
            mid_write = wait_for_checkpoint_write(run, timeout=120, stale=stale)
            lines = []
        else:  # right after a random one of its epoch and save lines: mid-save or mid-epoch
            lines, wanted = [], rng.randint(1, 3)
            for line in process.stdout:
                lines.append(line)
                wanted -= line.startswith(('epoch ', 'saved '))
                if not wanted:
                    break
            mid_write = False
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
        output = ''.join(lines) + output
        finished = process.returncode == 0
        killed_mid_write += mid_write and not finished
        # Killed before its first epoch or save line (start-up on a loaded machine), it may not have said yet
        # where it resumes; once it trains, it must have resumed from the newest complete checkpoint.
        if any(line.startswith(('resuming', 'epoch ', 'saved ')) for line in output.splitlines()):
            assert resumed_step(output) == expected_step, output
            resumed_correctly += rounds > 0
        steps = complete_checkpoint_steps(run)
        assert max(steps, default=0) >= expected_step  # the newest complete save is never lost
        expected_step = max(steps, default=0)
        rounds += 1
    result = run_script('vae.py', *ARGS, '--run_directory', run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert resumed_step(result.stdout) == expected_step
    # The rounds may have reached the last step themselves (a kill after the final save): then nothing is left.
    done_before = expected_step == TOTAL_STEPS and 'has trained all 4 epochs' in result.stdout
    assert f'trained 4 epochs ({TOTAL_STEPS} steps)' in result.stdout or done_before, result.stdout
    assert not [f for f in os.listdir(run / 'models') if 'tempstate' in f]
    print(f'\n{rounds} SIGKILL rounds ({killed_mid_write} during a checkpoint write); {resumed_correctly + 1} '
          f'restarts resumed from the newest complete checkpoint')
    assert killed_mid_write >= 1


@pytest.mark.process  # SIGINT / SIGTERM to a training process
@pytest.mark.parametrize('signum', [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_sigint_and_sigterm_save_the_current_step_and_resume_there(tmp_path, signum):
    run = tmp_path / 'run'
    process = start_training(run)
    for line in process.stdout:  # wait for epoch 0 to end, then interrupt: it is saving epoch 0 or in epoch 1
        if line.startswith('epoch   0'):
            break
    process.send_signal(signum)
    output = process.stdout.read()
    assert process.wait(timeout=60) == 128 + signum
    name = signal.Signals(signum).name
    assert f'{name}: saved ' in output and 'run the same command to resume' in output
    interrupted = run_folder.list_checkpoints(run / 'models', 'interrupted')
    assert len(interrupted) == 1
    step = next(iter(interrupted))
    assert STEPS_PER_EPOCH < step < TOTAL_STEPS and step % STEPS_PER_EPOCH  # inside an epoch, not at its end
    assert os.listdir(run / 'logs')

    result = run_script('vae.py', *ARGS, '--run_directory', run)
    assert result.returncode == 0, result.stderr
    assert resumed_step(result.stdout) == step and f'interrupted_{step}' in result.stdout
    assert f'trained 4 epochs ({TOTAL_STEPS} steps)' in result.stdout


def test_a_non_finite_loss_stops_without_saving_it(tmp_path, mnist):
    config = tiny_config(tmp_path / 'run', '--num_epoch', '1')
    data = subset(mnist, 640)
    vae.train(config, data)  # a good checkpoint model_0
    data['train'] = data['train'].copy()
    data['train'][:] = float('nan')
    config['num_epoch'] = 2
    with pytest.raises(UserError, match=r'non-finite \(loss nan\) at step 10 of epoch 1; .* the last good '
                                        r'checkpoint is .*model_0'):
        vae.train(config, data)
    assert sorted(run_folder.list_checkpoints(tmp_path / 'run' / 'models')) == [0]
    assert int(tf.train.load_variable(str(tmp_path / 'run' / 'models' / 'model_0'), 'global_step')) == 10


def test_weights_made_non_finite_by_an_update_are_never_saved(tmp_path, mnist):
    # learning_rate inf passes no command line (check_config refuses it): set here, it makes the first update
    # turn the weights to inf while that step's loss and gradients were still finite. One step an epoch: that
    # update is the last before model_0 would be saved.
    config = tiny_config(tmp_path / 'run', '--num_epoch', '2')
    config['learning_rate'] = float('inf')
    with pytest.raises(UserError, match='the weights became non-finite in the update at step 0 of epoch 0; '
                                        'nothing was saved after it, the last good checkpoint is None'):
        vae.train(config, subset(mnist, 64))
    assert run_folder.list_checkpoints(tmp_path / 'run' / 'models') == {}
