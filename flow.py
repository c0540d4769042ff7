"""A RealNVP normalising flow (Dinh et al., arXiv:1605.08803) fitted by maximum likelihood to a trained model's
latents: the `flow` sampler of vae_inference.py (a latent density fitted ex post, as GLF and Ghosh et al.'s GMM).

    weights, best = flow.fit(train_latents, held_out_latents, epochs, seed)  # best: its log-likelihoods, in nats
    latents = flow.sample(weights, count, seed)                             # [count, z_dim] draws of the density
    log_p = flow.log_likelihood(weights, latents)                           # [count] log densities, in nats

The density: z is standardised by the training latents' mean and standard deviation, then COUPLINGS affine
coupling layers map it to u ~ N(0, I). Each layer keeps a masked half of its input, x_a, and moves the other half,
x_b <- x_b * exp(s(x_a)) + t(x_a), with s and t from one network of two ReLU layers of WIDTH units (s bounded by a
learned multiple of tanh, as RealNVP); the masks alternate between even / odd dimensions and first / second halves,
so every dimension is moved, and conditions the others, in every 4 layers. log p(z) = log N(u; 0, I) + the sum of
the layers' s over the moved dimensions - the sum of the log standard deviations. Sampling runs the layers backwards:
x_b = (x_b - t(x_a)) * exp(-s(x_a)).
"""
import collections
import sys

import numpy as np
from tqdm import tqdm

import process
import vae

tf, tf1 = process.tf, process.tf1

COUPLINGS, WIDTH = 8, 256
BATCH_SIZE = 256
LEARNING_RATE = 1e-3     # Adam, times LEARNING_RATE_DECAY each epoch
LEARNING_RATE_DECAY = 0.95
FIT_SETTINGS = (COUPLINGS, WIDTH, BATCH_SIZE, LEARNING_RATE, LEARNING_RATE_DECAY)  # what a kept fit is keyed by
SCOPE = 'flow'


Flow = collections.namedtuple('Flow', [
    'z',              # placeholder: [batch, z_dim] latents to score or fit
    'log_prob',       # [batch] log p(z) under the flow, in nats
    'loss',           # batch mean of -log p(z)
    'learning_rate',  # placeholder: Adam's step size
    'train_op',       # one Adam step on loss
    'u',              # placeholder: [count, z_dim] draws of N(0, I)
    'latents',        # [count, z_dim] the flow's inverse of u: draws of the fitted density
    'standardise',    # (shift, log_scale) variables: the training latents' mean and log standard deviation
])


def masks(z_dim):
    """COUPLINGS masks of [z_dim] floats, 1 on the dimensions a layer keeps (its conditioning half)."""
    index = np.arange(z_dim)
    patterns = [index % 2 == 0, index % 2 == 1, index < z_dim // 2, index >= z_dim // 2]
    return [patterns[i % len(patterns)].astype(np.float32) for i in range(COUPLINGS)]


def coupling_scale_shift(x, mask, name):
    """s and t of one coupling layer from its kept half x * mask; zero on the kept half."""
    z_dim = int(x.shape[-1])
    with tf1.variable_scope(name, reuse=tf1.AUTO_REUSE):
        h = tf.nn.relu(vae.dense(x * mask, WIDTH, 'fc0', np.sqrt(2.0 / z_dim)))
        h = tf.nn.relu(vae.dense(h, WIDTH, 'fc1', np.sqrt(2.0 / WIDTH)))
        # Near-zero outputs at the start: every layer begins as (almost) the identity.
        bound = tf1.get_variable('s_bound', [z_dim], initializer=tf1.ones_initializer())
        s = bound * tf.tanh(vae.dense(h, z_dim, 's', 1e-3))
        t = vae.dense(h, z_dim, 't', 1e-3)
    return s * (1 - mask), t * (1 - mask)


def build_flow(z_dim, seed):
    """The flow's graph: log p of fed latents z and its Adam step, and the latents of fed u."""
    tf1.set_random_seed(seed)
    with tf1.variable_scope(SCOPE):
        shift = tf1.get_variable('shift', [z_dim], initializer=tf1.zeros_initializer(), trainable=False)
        log_scale = tf1.get_variable('log_scale', [z_dim], initializer=tf1.zeros_initializer(), trainable=False)
        z = tf1.placeholder(tf.float32, [None, z_dim], name='z')
        x, log_det = (z - shift) * tf.exp(-log_scale), -tf.reduce_sum(log_scale)
        for i, mask in enumerate(masks(z_dim)):
            s, t = coupling_scale_shift(x, mask, f'coupling{i}')
            x, log_det = x * tf.exp(s) + t, log_det + tf.reduce_sum(s, axis=-1)
        log_prob = vae.normal_log_density(x, 0.0, 1.0) + log_det
        loss = -tf.reduce_mean(log_prob)
        learning_rate = tf1.placeholder(tf.float32, [], name='learning_rate')
        train_op = tf1.train.AdamOptimizer(learning_rate).minimize(loss)
        u = tf1.placeholder(tf.float32, [None, z_dim], name='u')
        x = u
        for i, mask in reversed(list(enumerate(masks(z_dim)))):
            s, t = coupling_scale_shift(x, mask, f'coupling{i}')
            x = (x - t) * tf.exp(-s)
        latents = x * tf.exp(log_scale) + shift
    return Flow(z, log_prob, loss, learning_rate, train_op, u, latents, (shift, log_scale))


def model_variables(graph):
    """The flow's weights and its standardisation (not Adam's slots)."""
    standardise = {f'{SCOPE}/shift', f'{SCOPE}/log_scale'}
    return [v for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES, SCOPE)
            if v.op.name in standardise or v in graph.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES)]


def weight_shapes(z_dim):
    """{variable name: shape} of a flow for z_dim latents: what a kept one must hold."""
    with tf.Graph().as_default() as graph:
        build_flow(z_dim, 0)
        return {v.op.name: tuple(v.shape.as_list()) for v in model_variables(graph)}


def mean_log_likelihood(sess, flow, latents):
    """The mean of log p(z) over latents, in nats (float64 sum over batches of 10,000)."""
    return float(sum(np.sum(sess.run(flow.log_prob, {flow.z: latents[i:i + 10000]}), dtype=np.float64)
                     for i in range(0, len(latents), 10000)) / len(latents))


def fit(train, held_out, epochs, seed, stds=None):
    """The flow fitted by Adam to [count, z_dim] train latents for `epochs` epochs (with stds, their posterior
    standard deviations, to train + stds * fresh standard normal noise each epoch), with a progress bar; returns
    the weights of the epoch whose held-out mean log-likelihood was highest ({variable name: array}) and
    {'train_log_likelihood', 'held_out_log_likelihood', 'epoch'} of that epoch, in nats per latent vector. A
    non-finite loss stops the fit (the weights then kept are the best finite epoch's, if any)."""
    graph = tf.Graph()
    with graph.as_default():
        flow = build_flow(train.shape[1], seed)
        initialize = tf1.global_variables_initializer()
        # the spread of what is fitted: with stds, the means' and the posteriors' own
        mean = train.mean(0)
        std = np.maximum(np.sqrt(train.var(0) + (0 if stds is None else np.mean(np.square(stds), 0))), 1e-6)
        standardise = [variable.assign(value.astype(np.float32))
                       for variable, value in zip(flow.standardise, (mean, np.log(std)))]
    graph.finalize()
    random = np.random.RandomState(seed)
    best = {'held_out_log_likelihood': -np.inf, 'train_log_likelihood': np.nan, 'epoch': -1}
    weights = None
    with tf1.Session(graph=graph) as sess, \
            tqdm(range(epochs), desc='flow', unit='epoch', file=sys.stdout, dynamic_ncols=True,
                 mininterval=0.5 if sys.stdout.isatty() else 60) as bar:
        sess.run(initialize)
        sess.run(standardise)
        for epoch in bar:
            order = random.permutation(len(train))
            rate = LEARNING_RATE * LEARNING_RATE_DECAY ** epoch
            fitted = train if stds is None else (train + stds * random.standard_normal(train.shape)).astype(np.float32)
            losses = [sess.run([flow.loss, flow.train_op],
                               {flow.z: fitted[order[i:i + BATCH_SIZE]], flow.learning_rate: rate})[0]
                      for i in range(0, len(train), BATCH_SIZE)]
            if not np.all(np.isfinite(losses)):
                break
            held = mean_log_likelihood(sess, flow, held_out)
            if held > best['held_out_log_likelihood']:
                best = {'held_out_log_likelihood': held, 'train_log_likelihood': -float(np.mean(losses)),
                        'epoch': epoch}
                weights = {v.op.name: value for v, value in
                           zip(model_variables(graph), sess.run(model_variables(graph)))}
            bar.set_postfix(train=f'{-np.mean(losses):.2f}', held_out=f'{held:.2f}')
    return weights, best


def restored(weights):
    """A session and graph holding the flow of these weights."""
    z_dim = weights[f'{SCOPE}/shift'].shape[0]
    graph = tf.Graph()
    with graph.as_default():
        flow = build_flow(z_dim, 0)
        feeds = {tf1.placeholder(v.dtype.base_dtype, v.shape): v for v in model_variables(graph)}
        assign = [v.assign(placeholder) for placeholder, v in feeds.items()]
    graph.finalize()
    sess = tf1.Session(graph=graph)
    sess.run(assign, {placeholder: weights[v.op.name] for placeholder, v in feeds.items()})
    return sess, flow


def log_likelihood(weights, latents):
    """log p(z) of each of the [count, z_dim] latents under the flow of these weights, in nats."""
    sess, flow = restored(weights)
    with sess:
        return np.concatenate([sess.run(flow.log_prob, {flow.z: latents[i:i + 10000]})
                               for i in range(0, len(latents), 10000)])


def latents_of(weights, u):
    """The latents of [count, z_dim] draws u of N(0, I): the inverse flow of these weights."""
    sess, flow = restored(weights)
    with sess:
        return np.concatenate([sess.run(flow.latents, {flow.u: u[i:i + 10000]}) for i in range(0, len(u), 10000)])


def sample(weights, count, seed):
    """count latents: u ~ N(0, I) (seeded) through the inverse flow."""
    z_dim = weights[f'{SCOPE}/shift'].shape[0]
    return latents_of(weights, np.random.RandomState(seed).standard_normal((count, z_dim)).astype(np.float32))
