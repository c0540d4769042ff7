"""The two-stage VAE sampler of Dai & Wipf (arXiv:1903.05789, 2019): a second, small VAE fitted to a trained
model's latents of the training set. The latents a decoder was trained on do not fill N(0, I), so prior samples
land where the decoder saw none; the second stage learns where they are: u ~ N(0, I) is decoded to
z = f(u) + gamma * noise, and z by the first stage's decoder (vae_inference.py --sampler two_stage).

    stage, loss = two_stage.fit(z_means, epochs, seed)  # {variable name: array}, the fitted second stage
    stage, loss = two_stage.fit(z_means, epochs, seed, z_stds)  # fitted to samples of q(z|x), as published
    latents = two_stage.sample(stage, count, seed)      # [count, z_dim] first-stage latents

The network is Dai & Wipf's second stage: encoder and decoder of DEPTH ReLU layers of WIDTH units, the input
concatenated to the last hidden layer, and a learned decoder standard deviation gamma (one scalar, as in their code).
By default it is fitted to the posterior means, as the gmm sampler's mixture is (Ghosh et al. 2020's ex-post density
estimation); given the posterior standard deviations too, it is fitted as Dai & Wipf fit it, to samples of q(z|x)
drawn afresh every epoch (vae_inference.py --fit_to samples). Their first stage learns its decoder variance
(the MNIST_sharp preset), which drives
the posterior variances of the used dimensions towards 0, so samples and means nearly coincide there. Ours keep wide
posteriors (the MNIST_bernoulli run's posterior standard deviations average 0.18-0.90 per dimension), whose samples
fill N(0, I): fitted to them, the second stage stayed at the prior (gamma 0.96 and 45.5 nats, N(0, I)'s entropy, after
6 epochs), where fitted to the means it had gamma 0.50 and 36.9 nats.
"""
import collections
import sys

import numpy as np
from tqdm import tqdm

import process
import vae

tf, tf1 = process.tf, process.tf1

DEPTH, WIDTH = 3, 512    # Dai & Wipf: 3 and 1024 (second_depth, second_dim); half the width for 2 CPU cores
BATCH_SIZE = 128
LEARNING_RATE = 1e-3     # Adam; the fit's epochs fall in LEARNING_RATE_PERIODS equal parts, each at half the rate
LEARNING_RATE_PERIODS = 4  # of the one before: 10 epochs each of the default 40 (Dai & Wipf: 300 of their 800)


SecondStage = collections.namedtuple('SecondStage', [
    'z',              # placeholder: [batch, z_dim] first-stage latents (the training posterior means)
    'loss',           # batch mean of the second stage's negative ELBO of z, in nats
    'learning_rate',  # placeholder: Adam's step size
    'train_op',       # one Adam step on loss
    'u', 'noise',     # placeholders: [count, z_dim] second-stage prior samples and standard normal noise
    'latents',        # [count, z_dim] f(u) + gamma * noise: samples of the fitted aggregate posterior
    'log_gamma',      # log of the decoder's standard deviation gamma (a scalar)
])


def block(x, name):
    """DEPTH ReLU layers of WIDTH units, then the input beside their output (He-initialised)."""
    h = x
    with tf1.variable_scope(name):
        for i in range(DEPTH):
            h = tf.nn.relu(vae.dense(h, WIDTH, f'fc{i}', np.sqrt(2.0 / int(h.shape[-1]))))
    return tf.concat([x, h], -1)


def second_stage_decoder(u, z_dim):
    with tf1.variable_scope('decoder', reuse=tf1.AUTO_REUSE):
        return vae.dense(block(u, 'hidden'), z_dim, 'z_hat', np.sqrt(1.0 / (z_dim + WIDTH)))


def build_second_stage(z_dim, seed):
    """The second stage's graph, trained on fed latents z and sampled from fed u and noise."""
    tf1.set_random_seed(seed)
    z = tf1.placeholder(tf.float32, [None, z_dim], name='z')
    with tf1.variable_scope('encoder'):
        h = block(z, 'hidden')
        u_mean = vae.dense(h, z_dim, 'u_mean', np.sqrt(1.0 / int(h.shape[-1])))
        u_std = tf.nn.softplus(vae.dense(h, z_dim, 'u_std', np.sqrt(1.0 / int(h.shape[-1])))) + vae.MIN_STD
    log_gamma = tf1.get_variable('log_gamma', [], initializer=tf1.zeros_initializer())
    u_sample = u_mean + u_std * tf.random.normal(tf.shape(u_mean))
    distortion = -vae.normal_log_density(z, second_stage_decoder(u_sample, z_dim), tf.exp(log_gamma))
    loss = tf.reduce_mean(distortion + vae.kl_divergence(u_mean, u_std))
    learning_rate = tf1.placeholder(tf.float32, [], name='learning_rate')
    train_op = tf1.train.AdamOptimizer(learning_rate).minimize(loss)
    u = tf1.placeholder(tf.float32, [None, z_dim], name='u')
    noise = tf1.placeholder(tf.float32, [None, z_dim], name='noise')
    latents = second_stage_decoder(u, z_dim) + tf.exp(log_gamma) * noise
    return SecondStage(z, loss, learning_rate, train_op, u, noise, latents, log_gamma)


def model_variables(graph):
    """The second stage's weights (not Adam's slots)."""
    return graph.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES)


def weight_shapes(z_dim):
    """{variable name: shape} of a second stage for z_dim latents: what a kept one must hold."""
    with tf.Graph().as_default() as graph:
        build_second_stage(z_dim, 0)
        return {v.op.name: tuple(v.shape.as_list()) for v in model_variables(graph)}


def halving_epochs(epochs):
    """Epochs between the learning rate's halvings: a fit of any length anneals as far as the default 40 do."""
    return max(1, round(epochs / LEARNING_RATE_PERIODS))


def learning_rate(epoch, epochs):
    return LEARNING_RATE * 0.5 ** (epoch // halving_epochs(epochs))


def fit_settings(epochs):
    """What a kept fit of `epochs` epochs is keyed by (with its epochs): the network, the batch and the schedule."""
    return (DEPTH, WIDTH, BATCH_SIZE, LEARNING_RATE, halving_epochs(epochs))


def fit(latents, epochs, seed, stds=None):
    """The second stage fitted by Adam to [count, z_dim] latents for `epochs` epochs, with a progress bar;
    returns its weights {variable name: array} and the mean of the last epoch's batch losses, in nats. With stds
    (the latents' posterior standard deviations), each epoch fits latents + stds * fresh standard normal noise."""
    graph = tf.Graph()
    with graph.as_default():
        stage = build_second_stage(latents.shape[1], seed)
        initialize = tf1.global_variables_initializer()
    graph.finalize()
    random, loss = np.random.RandomState(seed), float('nan')
    with tf1.Session(graph=graph) as sess, \
            tqdm(range(epochs), desc='second stage', unit='epoch', file=sys.stdout, dynamic_ncols=True,
                 mininterval=0.5 if sys.stdout.isatty() else 60) as bar:
        sess.run(initialize)
        for epoch in bar:
            order = random.permutation(len(latents))
            rate = learning_rate(epoch, epochs)
            fitted = latents if stds is None else \
                (latents + stds * random.standard_normal(latents.shape)).astype(np.float32)
            losses = [sess.run([stage.loss, stage.train_op],
                               {stage.z: fitted[order[i:i + BATCH_SIZE]], stage.learning_rate: rate})[0]
                      for i in range(0, len(latents), BATCH_SIZE)]
            loss = float(np.mean(losses))
            bar.set_postfix(loss=f'{loss:.3f}', gamma=f'{np.exp(sess.run(stage.log_gamma)):.4f}')
        weights = {v.op.name: value for v, value in zip(model_variables(graph), sess.run(model_variables(graph)))}
    return weights, loss


def sample(weights, count, seed):
    """count first-stage latents: u ~ N(0, I) through the fitted second stage's decoder, plus gamma * noise."""
    z_dim = weights['decoder/z_hat/b'].shape[0]
    graph = tf.Graph()
    with graph.as_default():
        stage = build_second_stage(z_dim, seed)
        feeds = {tf1.placeholder(v.dtype.base_dtype, v.shape): v for v in model_variables(graph)}
        assign = [v.assign(placeholder) for placeholder, v in feeds.items()]
    graph.finalize()
    random = np.random.RandomState(seed)  # u is then vae.fixed_latents' draw: prior and two_stage samples pair up
    u, noise = (random.standard_normal((count, z_dim)).astype(np.float32) for _ in range(2))
    with tf1.Session(graph=graph) as sess:
        sess.run(assign, {placeholder: weights[v.op.name] for placeholder, v in feeds.items()})
        return np.concatenate([sess.run(stage.latents, {stage.u: u[i:i + 10000], stage.noise: noise[i:i + 10000]})
                               for i in range(0, count, 10000)])
