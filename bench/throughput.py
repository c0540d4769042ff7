"""Training throughput of vae.py's real training step, against a per-step feed_dict loop of the same graph.

    python bench/throughput.py                          # MNIST, 5 epochs of 234 steps after 1 warm-up epoch
    python bench/throughput.py --epochs 3 --num_threads 1   # config keys override as in vae.py

Each case runs in its own process (so its peak memory is its own) and times whole epochs exactly as
vae.train runs them: the iterator initialised with the epoch's shuffle seed, then one session.run of the
train op (plus the loss scalars the progress bar shows) per step. The 'feed_dict' case runs the same graph
but feeds each batch, sliced in numpy, into the iterator's output tensor. A 2048^3 fp32 matmul, timed in
the same run, gives the arithmetic ceiling.
"""
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import utils  # noqa: E402
import vae  # noqa: E402

tf = vae.tf
tf1 = tf.compat.v1
MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'data', 'mnist')


def training_flops_per_image(config):
    """Multiply-adds x 2 of one forward pass, x 3 for the backward pass (input and weight gradients)."""
    k2 = config['kernel_size'] ** 2
    height, width, channels = config['image_height'], config['image_width'], config['image_channels']
    flops = 0
    for filters, stride in zip(config['encoder_filters'], config['encoder_strides']):
        height, width = -(-height // stride), -(-width // stride)
        flops += 2 * height * width * k2 * channels * filters
        channels = filters
    features = height * width * channels
    flops += 2 * 2 * features * config['z_dim']                  # z_mean and z_std heads
    flops += 2 * config['z_dim'] * features                      # decoder's first dense layer
    for filters, stride in zip(config['decoder_filters'], config['decoder_strides']):
        flops += 2 * height * width * k2 * channels * filters   # each input pixel scatters a k x k x filters patch
        height, width, channels = height * stride, width * stride, filters
    if config['output_head'] == 'dense_sigmoid':
        pixels = config['image_height'] * config['image_width'] * config['image_channels']
        flops += 2 * height * width * channels * pixels          # output dense layer
    return 3 * flops


def matmul_gflops(config, n=2048, repeats=20):
    """Best-of fp32 GFLOP/s of an n x n x n matmul on this machine with the training's thread settings."""
    with tf.Graph().as_default() as graph:
        a = tf1.get_variable('a', [n, n], initializer=tf1.random_normal_initializer(seed=1))
        b = tf1.get_variable('b', [n, n], initializer=tf1.random_normal_initializer(seed=2))
        product = tf.reduce_sum(tf.matmul(a, b))
        with tf1.Session(graph=graph, config=vae.session_config(config)) as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(product)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                sess.run(product)
                times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def time_epochs(config, data, mode, epochs):
    """Images/s of each timed epoch (the first, warm-up epoch excluded)."""
    if config['deterministic']:
        tf.config.experimental.enable_op_determinism()
    with tf.Graph().as_default() as graph:
        model = vae.build_training_graph(config)
    graph.finalize()
    images = data['train']  # what the input pipeline is fed
    batch_size = config['batch_size']
    steps = len(images) // batch_size
    fetches = [model['train_op'], model['loss'], model['reconstruction_loss'], model['kl']]
    rates = []
    with tf1.Session(graph=graph, config=vae.session_config(config)) as sess:
        sess.run(model['init'])
        for epoch in range(epochs + 1):
            start = time.perf_counter()
            if mode == 'tf.data':
                sess.run(model['iterator'].initializer, {model['train_data']: images,
                                                         model['shuffle_seed']: epoch})
                for _ in range(steps):
                    sess.run(fetches)
            else:
                order = np.random.RandomState(epoch).permutation(len(images))
                for i in range(steps):
                    batch = images[order[i * batch_size:(i + 1) * batch_size]]
                    sess.run(fetches, {model['images']: batch})
            if epoch > 0:
                rates.append(steps * batch_size / (time.perf_counter() - start))
    return rates


def run_case(config, mode, epochs):
    """One measurement in this process; prints one JSON line."""
    rates = time_epochs(config, vae.load_data(config), mode, epochs)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({'rates': rates, 'peak_mib': peak_mib}))


def main(argv):
    config, options = utils.parse_command_line(['--data_directory', MNIST] + argv, {'epochs': 5, 'case': ''})
    if options['case']:
        return run_case(config, options['case'], options['epochs'])
    ceiling = matmul_gflops(config)
    flops = training_flops_per_image(config)
    print(f'{config["dataset"]}: batch {config["batch_size"]}, {flops / 1e6:.1f} MFLOP per training image; '
          f'2048^3 fp32 matmul {ceiling:.0f} GFLOP/s -> ceiling {ceiling * 1e9 / flops:,.0f} images/s; '
          f'{options["epochs"]} timed epochs after 1 warm-up, {os.cpu_count()} cores')
    results = {}
    for mode in ('tf.data', 'feed_dict'):
        output = subprocess.run([sys.executable, __file__, '--case', mode, *argv],
                                capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    baseline = np.median(results['feed_dict']['rates'])
    print(f'| {"input":<30} | {"images/s median":>15} | {"min - max":>13} | {"% of ceiling":>12} | '
          f'{"peak MiB":>8} | {"vs feed_dict":>12} |')
    print(f'| {"-" * 30} | {"-" * 15}:| {"-" * 13}:| {"-" * 12}:| {"-" * 8}:| {"-" * 12}:|')
    for mode, label in (('tf.data', 'vae.py step (tf.data)'), ('feed_dict', 'same graph, per-step feed_dict')):
        rates = results[mode]['rates']
        median = np.median(rates)
        print(f'| {label:<30} | {median:>15,.0f} | {min(rates):>6,.0f}-{max(rates):<6,.0f} | '
              f'{100 * median * flops / (ceiling * 1e9):>11.1f}% | {results[mode]["peak_mib"]:>8,.0f} | '
              f'{median / baseline:>11.2f}x |')


if __name__ == '__main__':
    utils.exit_on_user_error(lambda: main(sys.argv[1:]))
