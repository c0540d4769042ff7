"""Training throughput of vae.py's real training step, against a per-step feed_dict loop of the same graph.

    python bench/throughput.py                           # MNIST: 5 rounds of one timed epoch (234 steps) per case
    python bench/throughput.py --repeats 3 --num_threads 1   # config keys override as in vae.py
    python bench/throughput.py --dataset celebA          # CelebA: 5 rounds of 4 steps per case, and the input alone
    python bench/throughput.py --precisions float32,mixed_bfloat16 --repeats 3   # precisions x batch 256, 512
    python bench/throughput.py --dataset MNIST_bernoulli --samples 1,5 --steps 100   # the iwae objective's k
    python bench/throughput.py --dataset MNIST_bernoulli --evaluation   # vae_inference.py --evaluate's rate, k=5000
    python bench/throughput.py --fid --repeats 3         # Inception's images/s for vae_inference.py --fid
    python bench/throughput.py --presets MNIST_bernoulli,MNIST_iaf --repeats 3   # presets' training and bound rates

Each timed run is a process of its own (so its peak memory is its own); the cases alternate round by round,
since this shared machine's speed drifts. It runs the training step exactly as
vae.train does: the iterator initialised with the epoch's shuffle seed at each epoch, then one session.run of
the train op (plus the loss scalars the progress bar shows) per step. The 'feed_dict' case runs the same graph
with a placeholder in place of the tf.data input, fed each batch: sliced in numpy (MNIST), or decoded with PIL
in the training thread as the original did (CelebA). A 2048^3 fp32 matmul, timed in the same run, gives the
arithmetic ceiling. For CelebA it also times the input alone: the PIL loop, the tf.data JPEG pipeline and the
cache. Without a CelebA folder it makes 1024 synthetic 178x218 JPEGs in the temp folder.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import command_line  # noqa: E402
import config_keys  # noqa: E402
import datasets  # noqa: E402
import deploy  # noqa: E402
import fid  # noqa: E402
import process  # noqa: E402
import vae  # noqa: E402
import vae_inference  # noqa: E402

tf = process.tf
tf1 = tf.compat.v1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, '..', 'shared', 'data', 'mnist')  # used when config's data_directory is absent


def forward_flops(config):
    """Multiply-adds x 2 of one forward pass: (encoder with its heads, what runs once per sample of q(z|x): the
    IAF's steps and the decoder)."""
    k2 = config['kernel_size'] ** 2
    height, width, channels = config['image_height'], config['image_width'], config['image_channels']
    encoder = 0
    for filters, stride in zip(config['encoder_filters'], config['encoder_strides']):
        height, width = -(-height // stride), -(-width // stride)
        encoder += 2 * height * width * k2 * channels * filters
        channels = filters
    features = height * width * channels
    encoder += 2 * 2 * features * config['z_dim']                # z_mean and z_std heads
    decoder = 2 * config['z_dim'] * features                     # decoder's first dense layer
    z_dim, units = config['z_dim'], config['iaf_width']         # the flows (autoregressive_flows.made), per sample:
    if config['iaf_depth']:                                      # the IAF's context head, then each step's MADE
        encoder += 2 * features * units
        decoder += 2 * config['iaf_depth'] * (z_dim * units + 2 * units * units + 2 * units * z_dim)
    units = config['prior_flow_width']                           # log p(z) of each sample: each prior step's MADE
    decoder += 2 * config['prior_flow_depth'] * (z_dim * units + units * units + 2 * units * z_dim)
    for filters, stride in zip(config['decoder_filters'], config['decoder_strides']):
        decoder += 2 * height * width * k2 * channels * filters  # each input pixel scatters a k x k x filters patch
        height, width, channels = height * stride, width * stride, filters
    if config['output_head'] == 'dense_sigmoid':
        pixels = config['image_height'] * config['image_width'] * config['image_channels']
        decoder += 2 * height * width * channels * pixels        # output dense layer
    return encoder, decoder


def training_flops_per_image(config):
    """The forward pass x 3: the backward pass computes input and weight gradients."""
    return 3 * sum(forward_flops(config))


def matmul_gflops(config, n=2048, repeats=20):
    """Best-of fp32 GFLOP/s of an n x n x n matmul on this machine with the training's thread settings."""
    with tf.Graph().as_default() as graph:
        a = tf1.get_variable('a', [n, n], initializer=tf1.random_normal_initializer(seed=1))
        b = tf1.get_variable('b', [n, n], initializer=tf1.random_normal_initializer(seed=2))
        product = tf.reduce_sum(tf.matmul(a, b))
        with tf1.Session(graph=graph, config=deploy.session_config(config)) as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(product)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                sess.run(product)
                times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def pil_batch(paths, config):
    """The original's input: one batch of JPEGs opened, cropped and resized with PIL in the training thread."""
    return datasets.celeba_pixels(np.stack([datasets.crop_celeba_pil(path, config) for path in paths]))


def time_steps(config, data, mode, repeats, steps):
    """Images/s of each of `repeats` timed runs of `steps` training steps, after up to 20 untimed steps."""
    if config['deterministic']:
        tf.config.experimental.enable_op_determinism()
    train = data['train']  # what the input pipeline is fed
    per_epoch = config_keys.steps_per_epoch(config, len(train))
    with tf.Graph().as_default() as graph:
        model = vae.build_training_graph(config, per_epoch, train if mode == 'tf.data' else None)
    graph.finalize()
    batch_size = config['batch_size']
    fetches = [model.train_op, model.endpoints.loss, model.endpoints.distortion, model.endpoints.rate]
    losses = []
    state = {'position': per_epoch, 'epoch': 0, 'order': None}

    def step():
        if state['position'] == per_epoch:  # a new epoch, as vae.train starts one
            state['epoch'], state['position'] = state['epoch'] + 1, 0
            if mode == 'tf.data':
                sess.run(model.input.initializer, model.input.feed(state['epoch'], 0))
            state['order'] = np.random.RandomState(state['epoch']).permutation(len(train))
        if mode == 'tf.data':
            losses.append(sess.run(fetches)[1])
        else:
            position = state['position']
            chosen = train[state['order'][position * batch_size:(position + 1) * batch_size]]
            sess.run(fetches, {model.images: pil_batch(chosen, config) if config['dataset'] == 'celebA'
                               else chosen})
        state['position'] += 1

    rates = []
    with tf1.Session(graph=graph, config=deploy.session_config(config, training=True)) as sess:
        sess.run(model.init)
        for _ in range(min(20, steps)):  # graph optimisation, thread pools and allocations settle
            step()
        for _ in range(repeats):
            losses.clear()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rates.append(steps * batch_size / (time.perf_counter() - start))
    return rates, float(np.mean(losses)) if losses else None


def time_input(config, data, mode, images=2048):
    """Images/s of the CelebA input alone: the tf.data pipeline (from JPEGs or the cache) or the PIL loop."""
    if mode == 'pil':
        paths = data['train'][:images]
        start = time.perf_counter()
        for i in range(0, len(paths), config['batch_size']):
            pil_batch(paths[i:i + config['batch_size']], config)
        return len(paths) / (time.perf_counter() - start)
    train = np.concatenate([data['train']] * -(-images // len(data['train'])))[:images]
    with tf.Graph().as_default() as graph:
        training_input = datasets.input_pipeline(config, train)
    graph.finalize()
    with tf1.Session(graph=graph, config=deploy.session_config(config)) as sess:
        sess.run(training_input.initializer, training_input.feed(0, 0))
        sess.run(training_input.images)  # start-up (the shuffle buffer, the threads) is not the rate
        start, count = time.perf_counter(), 0
        while True:
            try:
                sess.run(training_input.images)
                count += config['batch_size']
            except tf.errors.OutOfRangeError:
                return count / (time.perf_counter() - start)


def synthetic_celeba(folder, count=1024):
    """Without a CelebA copy: face-sized test JPEGs (the tests' generator), made once."""
    if not os.path.isdir(folder):
        sys.path.insert(0, os.path.join(ROOT, 'tests'))
        from test_celeba import make_celeba
        make_celeba(folder, count, partition=(count - 64, 32, 32))
    return folder


def run_case(config, options):
    """One measurement in this process; prints one JSON line."""
    mode = options['case']
    if mode.startswith('input-'):
        cached = mode == 'input-cache'
        config = {**config, 'celebA_cache': cached}
        result = {'rate': time_input(config, datasets.load_dataset(config), 'pil' if mode == 'input-pil' else 'tf.data')}
    elif mode.startswith('precision:'):  # precision:<precision>:<batch size>, one epoch of the same images
        _, precision, batch = mode.split(':')
        config = {**config, 'precision': precision, 'batch_size': int(batch)}
        data = datasets.load_dataset(config)
        steps = config_keys.steps_per_epoch(config, len(data['train']))
        rates, loss = time_steps(config, data, 'tf.data', options['repeats'], steps)
        result = {'rates': rates, 'loss': loss}
    elif mode.startswith('preset:'):  # preset:<name>:<elbo, iwae or bound>, that preset's config under the flags
        _, name, what = mode.split(':')
        argv = [arg for arg in options['argv'] if arg != '--presets' and arg != options['presets']]
        config, _ = command_line.parse_command_line(['--dataset', name, *argv], FLAGS)
        if what == 'bound':
            rates = bound_rates(config, {**options, 'repeats': 1})
        else:  # the preset's train_samples under the iwae objective, or the one-sample ELBO
            config = {**config, 'objective': what, 'train_samples': config['train_samples'] if what == 'iwae' else 1}
            rates, _ = time_steps(config, datasets.load_dataset(config), 'tf.data', 1, options['steps'])
        result = {'rates': rates}
    elif mode.startswith('samples:'):  # samples:<train_samples>, the iwae objective
        config = {**config, 'objective': 'iwae', 'train_samples': int(mode.split(':')[1])}
        rates, _ = time_steps(config, datasets.load_dataset(config), 'tf.data', options['repeats'], options['steps'])
        result = {'rates': rates}
    else:
        rates, _ = time_steps(config, datasets.load_dataset(config), mode, options['repeats'], options['steps'])
        result = {'rates': rates}
    result['peak_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(argv, case):
    output = subprocess.run([sys.executable, __file__, '--case', case, *argv], capture_output=True, text=True)
    if output.returncode:
        raise process.UserError(f'benchmark case {case} failed: {output.stderr.strip().splitlines()[-1]}')
    return json.loads(output.stdout.strip().splitlines()[-1])


def rewritten_ops(config):
    """(ops computing in the half type, casts, all ops) of one training step's graph as TensorFlow ran it under the
    precision's rewrite (the partition graphs of a traced step)."""
    data = datasets.load_dataset(config)
    with tf.Graph().as_default() as graph:
        model = vae.build_training_graph(config, config_keys.steps_per_epoch(config, len(data['train'])), data['train'])
    graph.finalize()
    with tf1.Session(graph=graph, config=deploy.session_config(config, training=True)) as sess:
        sess.run(model.init)
        sess.run(model.input.initializer, model.input.feed(0, 0))
        metadata = tf1.RunMetadata()
        sess.run(model.train_op, options=tf1.RunOptions(output_partition_graphs=True), run_metadata=metadata)
    nodes = [node for partition in metadata.partition_graphs for node in partition.node]
    half = (tf.bfloat16 if config['precision'] == 'mixed_bfloat16' else tf.float16).as_datatype_enum
    converted = [node for node in nodes if node.op != 'Cast' and
                 any(node.attr[key].type == half for key in ('T', 'dtype') if key in node.attr)]
    return len(converted), sum(node.op == 'Cast' for node in nodes), len(nodes)


def precision_table(argv, config, options, ceiling, flops):
    """Each precision at each batch size: images/s of one epoch, alternated round by round, its ratio to float32
    at the same batch size, and the mean loss over that epoch (the same images and order for every case)."""
    cases = [(precision, int(batch)) for precision in options['precisions'].split(',')
             for batch in options['batch_sizes'].split(',')]
    rates, losses = {case: [] for case in cases}, {}
    for _ in range(options['repeats']):
        for precision, batch in cases:
            measured = measure(argv + ['--repeats', '1'], f'precision:{precision}:{batch}')
            rates[(precision, batch)] += measured['rates']
            losses[(precision, batch)] = measured['loss']
    print(f'| {"precision":<15} | {"batch":>5} | {"images/s median":>15} | {"min - max":>15} | {"vs float32":>10} | '
          f'{"% of fp32 ceiling":>17} | {"epoch mean loss":>15} |')
    print(f'| {"-" * 15} | {"-" * 4}:| {"-" * 15}:| {"-" * 15}:| {"-" * 10}:| {"-" * 17}:| {"-" * 15}:|')
    for precision, batch in cases:
        median = np.median(rates[(precision, batch)])
        base = np.median(rates[('float32', batch)]) if ('float32', batch) in rates else float('nan')
        print(f'| {precision:<15} | {batch:>5} | {median:>15,.1f} | {min(rates[(precision, batch)]):>7,.1f}-'
              f'{max(rates[(precision, batch)]):<7,.1f} | {median / base:>9.2f}x | '
              f'{100 * median * flops / (ceiling * 1e9):>16.1f}% | {losses[(precision, batch)]:>15.5f} |')


def bound_rates(config, options):
    """The importance-weighted bound as vae_inference.py --evaluate runs it (the decodes of one session.run held
    within IWAE_MEMORY, the encoder once per image), on untrained weights (the arithmetic is the same): samples
    (images x k) per second in each of `repeats` timed rounds."""
    images = datasets.evaluation_images(config, datasets.load_dataset(config)['test_images'])[:options['eval_images']]
    k = options['k']
    with tf.Graph().as_default() as graph:
        outputs = vae.build_inference_graph(config)
        init = tf1.global_variables_initializer()
    graph.finalize()
    rates = []
    with tf1.Session(graph=graph, config=deploy.session_config(config)) as sess:
        sess.run(init)
        vae_inference.importance_weighted_bound(sess, outputs, config, images[:1], k)  # warm-up
        for _ in range(options['repeats']):
            start = time.perf_counter()
            vae_inference.importance_weighted_bound(sess, outputs, config, images, k)
            rates.append(len(images) * k / (time.perf_counter() - start))
    return rates


def evaluation_table(config, options, ceiling):
    """bound_rates, and the full protocol's time at the median rate."""
    images, k = options['eval_images'], options['k']
    rates = bound_rates(config, options)
    encoder, decoder = forward_flops(config)
    flops = decoder + encoder / k
    median = np.median(rates)
    print(f'{config["dataset"]}: {decoder / 1e6:,.2f} MFLOP per decode, '
          f'{config_keys.decodes_per_run(config, vae_inference.IWAE_MEMORY):,} '
          f'decodes per session.run; 2048^3 fp32 matmul {ceiling:.0f} GFLOP/s -> ceiling '
          f'{ceiling * 1e9 / flops:,.0f} samples/s; {options["repeats"]} rounds of {images} images x k={k}')
    print(f'| {"importance-weighted bound":<30} | {"samples/s median":>16} | {"min - max":>17} | '
          f'{"% of ceiling":>12} | {"10,000 images x 5,000":>21} |')
    print(f'| {"-" * 30} | {"-" * 15}:| {"-" * 16}:| {"-" * 11}:| {"-" * 20}:|')
    print(f'| {"vae_inference.py --evaluate":<30} | {median:>16,.0f} | {min(rates):>8,.0f}-{max(rates):<8,.0f} | '
          f'{100 * median * flops / (ceiling * 1e9):>11.1f}% | {5e7 / median / 60:>17,.1f} min |')


FID_PROTOCOL = 30000  # Inception images of the FID protocol: 10,000 test images, reconstructions and samples


def inception_flops(weights):
    """Floating-point operations of one 299x299 image through fid.py's Inception up to pool_3 (TensorFlow's
    profiler, on a graph with a batch of one)."""
    with tf.Graph().as_default() as graph:
        fid.pool3_features(tf1.placeholder(tf.float32, [1, fid.INPUT_SIZE, fid.INPUT_SIZE, 3]), weights)
        profile = tf1.profiler.profile(graph, options=tf1.profiler.ProfileOptionBuilder(
            tf1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build())
    return profile.total_float_ops


def fid_table(config, options, ceiling):
    """vae_inference.py --fid's Inception (fid.feature_extractor: one graph and session, batches of fid_batch),
    on images of the dataset's size: images/s over `repeats` timed rounds of fid_images, the share of the matmul
    ceiling, and the protocol's time (FID_PROTOCOL images; later runs reuse the cached test statistics)."""
    weights = fid.load_weights(fid.weights_path(config['fid_cache_directory']))
    flops = inception_flops(weights)
    images = np.random.default_rng(0).integers(0, 256, (options['fid_images'], *config_keys.image_shape(config)),
                                               dtype=np.uint8)
    extract = fid.feature_extractor(weights, options['fid_batch'], progress=False)
    extract(images[:options['fid_batch']])  # the first run prepares the graph's 87 MB of constants
    rates = []
    for _ in range(options['repeats']):
        start = time.perf_counter()
        extract(images)
        rates.append(len(images) / (time.perf_counter() - start))
    median = np.median(rates)
    print(f'Inception-v3 to pool_3 at {fid.INPUT_SIZE}x{fid.INPUT_SIZE}: {flops / 1e9:.2f} GFLOP per image; 2048^3 '
          f'fp32 matmul {ceiling:.0f} GFLOP/s -> ceiling {ceiling * 1e9 / flops:,.1f} images/s; {options["repeats"]} '
          f'rounds of {len(images)} {"x".join(map(str, images.shape[1:]))} images in batches of '
          f'{options["fid_batch"]}; {os.cpu_count()} cores')
    print(f'| {"Inception pool_3 features":<30} | {"images/s median":>15} | {"min - max":>13} | {"% of ceiling":>12} | '
          f'{"protocol, 30,000 images":>23} |')
    print(f'| {"-" * 30} | {"-" * 14}:| {"-" * 12}:| {"-" * 11}:| {"-" * 22}:|')
    print(f'| {"vae_inference.py --fid":<30} | {median:>15,.2f} | {min(rates):>6,.2f}-{max(rates):<6,.2f} | '
          f'{100 * median * flops / (ceiling * 1e9):>11.1f}% | {FID_PROTOCOL / median / 3600:>19,.2f} h |')


def samples_table(argv, options):
    """The iwae objective's cost: training images/s and peak memory for each train_samples k, cases alternated
    round by round (the decoder runs k times per image, the encoder once)."""
    samples = [int(k) for k in options['samples'].split(',')]
    rates, peaks = {k: [] for k in samples}, {k: 0 for k in samples}
    for _ in range(options['repeats']):
        for k in samples:
            measured = measure(argv + ['--repeats', '1'], f'samples:{k}')
            rates[k] += measured['rates']
            peaks[k] = max(peaks[k], measured['peak_mib'])
    base = np.median(rates[samples[0]])
    print(f'| {"train_samples k":>15} | {"images/s median":>15} | {"min - max":>17} | {f"vs k={samples[0]}":>8} | '
          f'{"peak MiB":>8} |')
    print(f'| {"-" * 14}:| {"-" * 15}:| {"-" * 16}:| {"-" * 7}:| {"-" * 7}:|')
    for k in samples:
        median = np.median(rates[k])
        print(f'| {k:>15} | {median:>15,.1f} | {min(rates[k]):>8,.1f}-{max(rates[k]):<8,.1f} | '
              f'{median / base:>7.2f}x | {peaks[k]:>8,.0f} |')


def presets_table(argv, options):
    """Each preset's training steps, the one-sample ELBO's and the IWAE objective's of its train_samples (the steps
    of its ELBO and IWAE epochs; images/s), and its importance-weighted bound (samples/s of k = --k), one timed run
    per case and round, the cases alternated round by round."""
    names = options['presets'].split(',')
    cases = [(name, what) for name in names for what in PRESET_CASES]
    rates = {case: [] for case in cases}
    for _ in range(options['repeats']):
        for name, what in cases:
            rates[name, what] += measure(argv + ['--repeats', '1'], f'preset:{name}:{what}')['rates']
    base = {what: np.median(rates[names[0], what]) for what in PRESET_CASES}
    print(f'medians (min - max) of {options["repeats"]} rounds; the ratios against {names[0]}')
    print(f'| {"preset":<16} | ' + ' | '.join(f'{heading:>30}' for heading in PRESET_CASES.values()) + ' |')
    print(f'| {"-" * 16} | ' + ' | '.join('-' * 29 + ':' for _ in PRESET_CASES) + ' |')
    for name in names:
        cells = []
        for what in PRESET_CASES:
            values, median = rates[name, what], np.median(rates[name, what])
            cells.append(f'{median:,.0f} ({min(values):,.0f}-{max(values):,.0f}) {median / base[what]:.2f}x')
        print(f'| {name:<16} | ' + ' | '.join(f'{cell:>30}' for cell in cells) + ' |')


# The cases of presets_table: the ELBO step, the IWAE objective's step, the bound.
PRESET_CASES = {'elbo': 'ELBO step, images/s', 'iwae': 'IWAE step (its k), images/s',
                'bound': 'bound, samples/s'}


FLAGS = {'repeats': (5, 'timed rounds of every case'),
         'steps': (0, 'training steps in one timed run (0 = an epoch; CelebA 4)'),
         'case': ('', 'internal: run one case in this process and print its result as JSON'),
         'precisions': ('', 'comma-separated precisions to compare (e.g. float32,mixed_bfloat16)'),
         'batch_sizes': ('256,512', 'batch sizes of the precision table'),
         'evaluation': (None, "time vae_inference.py --evaluate's importance-weighted bound instead of training"),
         'k': (5000, '--evaluation, --presets: importance samples per image'),
         'eval_images': (20, '--evaluation, --presets: test images per timed round'),
         'samples': ('', 'comma-separated train_samples k to compare under the iwae objective (e.g. 1,5)'),
         'presets': ('', "comma-separated presets (config.py's dicts) whose training step and bound to compare"),
         'fid': (None, "time vae_inference.py --fid's Inception instead of training"),
         'fid_images': (100, '--fid: images per timed round'),
         'fid_batch': (50, '--fid: images per session.run (vae_inference.py --fid uses 50)')}


def main(argv):
    flags = FLAGS
    config, options = command_line.parse_command_line(argv, flags, __doc__.split('\n\n')[0])
    celeba = config['dataset'] == 'celebA'
    if config['dataset'].startswith('MNIST') and not os.path.isdir(config['data_directory']) and os.path.isdir(MNIST):
        argv = ['--data_directory', MNIST] + argv
    if celeba and not os.path.isdir(config['data_directory']):
        folder = synthetic_celeba(os.path.join(tempfile.gettempdir(), 'vae-bench-celeba', 'img_align_celeba'))
        argv = ['--data_directory', folder, '--celebA_cache_directory', os.path.join(folder, '..', 'cache')] + argv
    config, options = command_line.parse_command_line(argv, flags, __doc__.split('\n\n')[0])
    if not options['steps']:
        options['steps'] = 4 if celeba else \
            config_keys.steps_per_epoch(config, len(datasets.load_dataset(config)['train']))
        argv = argv + ['--steps', str(options['steps'])]
    if options['case']:
        return run_case(config, {**options, 'argv': argv})
    if options['presets']:  # checked before the matmul ceiling is timed
        names = options['presets'].split(',')
        presets = command_line.config_presets().configs
        if '--dataset' in argv or any(arg.startswith('--dataset=') for arg in argv) or len(set(names)) < len(names) \
                or not set(names) <= set(presets):
            raise process.UserError(f'--presets takes distinct presets of config.py ({", ".join(presets)}), each '
                                    f'measured under its own --dataset, got {options["presets"]!r}; leave --dataset '
                                    'out and name each preset once')
    ceiling = matmul_gflops(config)
    if options['evaluation']:
        return evaluation_table(config, options, ceiling)
    if options['fid']:
        return fid_table(config, options, ceiling)
    if options['samples']:
        return samples_table(argv, options)
    if options['presets']:
        return presets_table(argv, options)
    flops = training_flops_per_image(config)
    print(f'{config["dataset"]}: batch {config["batch_size"]}, {flops / 1e6:,.1f} MFLOP per training image; '
          f'2048^3 fp32 matmul {ceiling:.0f} GFLOP/s -> ceiling {ceiling * 1e9 / flops:,.0f} images/s; '
          f'{options["repeats"]} rounds of one timed run of {options["steps"]} steps per case (after up to 20 '
          f'untimed steps); {os.cpu_count()} cores')
    if celeba:
        print(f'data: {config["data_directory"]}')
    if options['precisions']:
        print(deploy.precision_line({**config, 'precision': 'mixed_bfloat16'}))
        for precision in options['precisions'].split(','):
            if precision != 'float32':
                converted, casts, total = rewritten_ops({**config, 'precision': precision})
                print(f'{precision}: a traced training step ran {converted} of its {total} ops in {precision[6:]}, '
                      f'with {casts} casts')
        return precision_table(argv, config, options, ceiling, flops)
    # This machine's speed drifts (a shared host: the matmul above varies by up to 1.7x between runs), so the
    # two cases alternate, one timed run each per round, rather than one case after the other.
    results = {'tf.data': {'rates': [], 'peak_mib': 0}, 'feed_dict': {'rates': [], 'peak_mib': 0}}
    for _ in range(options['repeats']):
        for mode, result in results.items():
            measured = measure(argv + ['--repeats', '1'], mode)
            result['rates'] += measured['rates']
            result['peak_mib'] = max(result['peak_mib'], measured['peak_mib'])
    baseline = np.median(results['feed_dict']['rates'])
    print(f'| {"training step":<40} | {"images/s median":>15} | {"min - max":>15} | {"% of ceiling":>12} | '
          f'{"peak MiB":>8} | {"vs feed_dict":>12} |')
    print(f'| {"-" * 40} | {"-" * 15}:| {"-" * 15}:| {"-" * 12}:| {"-" * 8}:| {"-" * 12}:|')
    feed_label = 'per-step PIL batch + feed_dict' if celeba else 'same graph, per-step feed_dict'
    for mode, label in (('tf.data', 'vae.py step (tf.data input)'), ('feed_dict', feed_label)):
        rates = results[mode]['rates']
        median = np.median(rates)
        print(f'| {label:<40} | {median:>15,.1f} | {min(rates):>7,.1f}-{max(rates):<7,.1f} | '
              f'{100 * median * flops / (ceiling * 1e9):>11.1f}% | {results[mode]["peak_mib"]:>8,.0f} | '
              f'{median / baseline:>11.2f}x |')
    if celeba:
        inputs = {mode: measure(argv, mode) for mode in ('input-pil', 'input-tf.data', 'input-cache')}
        step = np.median(results['tf.data']['rates'])
        heading = f'input alone ({config["celebA_crop"]})'
        print(f'\n| {heading:<40} | {"images/s":>10} | {"vs PIL loop":>11} | {"vs training step":>16} |')
        print(f'| {"-" * 40} | {"-" * 10}:| {"-" * 11}:| {"-" * 16}:|')
        labels = {'input-pil': "original's per-batch PIL loop (1 thread)",
                  'input-tf.data': 'tf.data decode_and_crop, parallel map', 'input-cache': 'tf.data from the uint8 cache'}
        for mode, label in labels.items():
            rate = inputs[mode]['rate']
            print(f'| {label:<40} | {rate:>10,.0f} | {rate / inputs["input-pil"]["rate"]:>10.2f}x | '
                  f'{rate / step:>15.0f}x |')


if __name__ == '__main__':
    process.exit_on_user_error(lambda: main(sys.argv[1:]))
