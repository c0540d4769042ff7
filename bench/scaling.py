"""Steps/s of 1 vs 2 towers and of 1 vs 2 workers, and the bytes a step moves between devices or machines.

    python bench/scaling.py                     # MNIST's model, 15,360 images, 6 epochs a case, 2 rounds
    python bench/scaling.py --repeats 1 --num_train_images 7680

Every case is `python vae.py` as a user runs it (the cluster cases start a parameter server and the workers on
127.0.0.1 ports): one process with 1 or 2 towers (clone_on_cpu), or a cluster of 1 parameter server with 1 or 2
workers, synchronous or not. The chief prints a line at each epoch; the rate is taken between its epoch-1 and
its last-but-one lines, so start-up, the first steps and the checkpoints at epoch 0 and the last are left out.
A step is one update of the variables: batch_size images with towers (split over them), batch_size per worker
with synchronous workers, batch_size with asynchronous ones. The cases alternate round by round (this shared
machine's speed drifts) and the median round is shown.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import command_line  # noqa: E402
import config as config_module  # noqa: E402
import config_keys  # noqa: E402
import deploy  # noqa: E402
import vae  # noqa: E402
from process import exit_on_user_error, tf  # noqa: E402

tf1 = tf.compat.v1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, '..', 'shared', 'data', 'mnist')  # used when config's data_directory is absent

# name: (worker processes (0 = no cluster), extra flags)
CASES = {
    '1 tower': (0, []),
    '2 towers (clone_on_cpu)': (0, ['--num_clones', '2', '--clone_on_cpu', 'true']),
    '1 worker + 1 ps': (1, []),
    '2 workers + 1 ps, sync': (2, []),
    '2 workers + 1 ps, async': (2, ['--sync_replicas', 'false']),
}


def run_case(workers, extra, args, run_directory):
    """Start the case's processes; the seconds between the chief's epoch-1 and last-but-one lines, and the
    epochs in between."""
    command = [sys.executable, os.path.join(ROOT, 'vae.py'), *args, *extra, '--run_directory', run_directory]
    environments = [{}]
    if workers:
        ports = deploy.free_ports(workers + 1)
        cluster = {'ps': [f'127.0.0.1:{ports[0]}'], 'worker': [f'127.0.0.1:{p}' for p in ports[1:]]}
        environments = [{'TF_CONFIG': json.dumps({'cluster': cluster, 'task': {'type': job, 'index': index}})}
                        for job, index in [('ps', 0)] + [('worker', i) for i in range(workers)]]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env={**os.environ, 'PYTHONUNBUFFERED': '1', **environment})
                 for environment in environments]
    chief = processes[1] if workers else processes[0]
    times, lines = {}, []
    try:
        for line in chief.stdout:
            lines.append(line)
            if line.startswith('epoch '):
                times[int(line.split()[1])] = time.perf_counter()
        for process in processes:
            if process.wait(timeout=600):
                raise SystemExit(f'{" ".join(command)} exited with {process.returncode}')
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    last = max(times, default=0)
    if last < 3 or 1 not in times:
        raise SystemExit(f'{" ".join(command)}: the chief printed no rate to take (use 4 epochs or more):\n' +
                         ''.join(lines))
    return times[last - 1] - times[1], last - 2


def parameter_count(config):
    """Floats in the variables a worker reads every step (weights and batch-norm averages; Adam's slots stay
    on the parameter servers) and, of them, the trainable ones whose gradients it sends back."""
    with tf.Graph().as_default():
        vae.build_vae(tf1.placeholder(tf.float32, [None, *config_keys.image_shape(config)]), config, training=True)
        count = lambda variables: sum(int(np.prod(v.shape)) for v in variables)
        return count(tf1.global_variables()), count(tf1.trainable_variables())


def main(argv):
    defaults = ['--num_train_images', '15360', '--num_epoch', '6', '--save_every', '1000', '--summary_every', '1000']
    config, options = command_line.parse_command_line(defaults + argv, {'repeats': (2, 'timed rounds of every case')},
                                                      __doc__.split('\n\n')[0])
    if not os.path.isdir(os.path.join(ROOT, config['data_directory'])) and os.path.isdir(MNIST):
        config['data_directory'] = MNIST
    args = [f'--{key}={value}' for key, value in config.items() if isinstance(value, (int, float, str))] + \
        [f'--{key}={",".join(map(str, value))}' for key, value in config.items() if isinstance(value, list) and value]
    batch = config['batch_size']
    images_per_step = lambda name: batch * (CASES[name][0] if CASES[name][0] and 'async' not in name else 1)
    rates = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as scratch:
        for round_number in range(options['repeats']):
            for case, (name, (workers, extra)) in enumerate(CASES.items()):
                run = os.path.join(scratch, f'round{round_number}-case{case}')
                seconds, epochs = run_case(workers, extra, args, run)
                rates[name].append(config['num_train_images'] // images_per_step(name) * epochs / seconds)
                print(f'round {round_number}: {name}: {rates[name][-1]:.2f} steps/s', flush=True)

    print(f'\n{config["dataset"]} model, batch_size {batch}, {config["num_train_images"]} images, '
          f'{os.cpu_count()} cores; median of {options["repeats"]} rounds\n')
    print('| case | images a step | steps/s | images/s | steps/s vs 1 tower |')
    print('| --- | ---: | ---: | ---: | ---: |')
    base = np.median(rates['1 tower'])
    for name in CASES:
        per_step = images_per_step(name)
        steps = np.median(rates[name])
        print(f'| {name} | {per_step} | {steps:.2f} | {steps * per_step:.0f} | {steps / base:.2f}x |')

    print('\n| model | variables (floats) | trainable | bytes a worker moves a step (read all + send gradients) |')
    print('| --- | ---: | ---: | ---: |')
    for name in ('MNIST', 'celebA'):
        total, trainable = parameter_count(config_module.configs[name])
        print(f'| {name} | {total:,} | {trainable:,} | {4 * (total + trainable) / 2**20:.2f} MiB |')


if __name__ == '__main__':
    exit_on_user_error(lambda: main(sys.argv[1:]))
