"""Convolutional VAE (Kingma & Welling, arXiv:1312.6114) in TensorFlow 1.x style graph mode: the model and its
training, read top to bottom.

    python vae.py                       # train the dataset selected in config.py (resumes if it has checkpoints)
    python vae.py --fresh               # start over in a new run folder, keeping the old one
    python vae.py --z_dim 32            # any config key can be overridden

The model first: layers, encoder, decoder, likelihoods and KL; build_vae, the one graph builder that training,
vae_inference.py, the tests and the benchmarks use; the inference graph and a model restored in a session of its
own (all that vae_inference.py uses). Then the training: the training graph, the saves, the training loop (one
loop, for one process and for a cluster worker), main. The data lives in datasets.py, several devices and
machines in deploy.py, the command line in command_line.py, run folders in run_folder.py and pictures in
pictures.py.
"""
import collections
import contextlib
import glob
import io
import os
import signal
import sys
import time

if __name__ == '__main__':  # Ctrl-C while TensorFlow loads ends the script quietly: nothing to save yet
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import numpy as np
from tqdm import tqdm

import command_line
import config_keys
import datasets
import deploy
import hparams
import autoregressive_flows
import pictures
import process
import run_folder
from process import UserError

tf, tf1 = process.tf, process.tf1

MIN_STD = 1e-6  # floor under the softplus so log(z_std) in the KL stays finite
# Graph collections, in step: each training batch norm's moving averages and the batch moments they follow.
MOVING_AVERAGES, BATCH_MOMENTS = 'moving_averages', 'batch_moments'
GRID_SIDE = 5   # the training grids are GRID_SIDE x GRID_SIDE images


# ---------------------------------------------------------------- layers

def weight(name, shape, stddev):
    return tf1.get_variable(name, shape, initializer=tf1.truncated_normal_initializer(stddev=stddev))


def dense(x, units, name, stddev, fold=None):
    with tf1.variable_scope(name):
        w = weight('w', [x.shape[-1], units], stddev)
        b = tf1.get_variable('b', [units], initializer=tf1.zeros_initializer())
        if fold:  # (x w + b) * multiplier + shift
            return tf.matmul(x, w * fold[0]) + (b * fold[0] + fold[1])
        return tf.matmul(x, w) + b


# The convolutions carry no bias: the batch norm after each one has its own offset. `fold` is an inference-mode
# batch norm (folded_batch_norm) merged into the weights: one convolution with a bias instead of three ops.
def conv2d(x, filters, kernel_size, stride, name, stddev, fold=None):
    with tf1.variable_scope(name):
        w = weight('w', [kernel_size, kernel_size, x.shape[-1], filters], stddev)
        if fold:
            return tf.nn.bias_add(tf.nn.conv2d(x, w * fold[0], strides=stride, padding='SAME'), fold[1])
        return tf.nn.conv2d(x, w, strides=stride, padding='SAME')


def deconv2d(x, filters, kernel_size, stride, name, stddev, fold=None):
    """Transposed convolution that multiplies height and width by stride."""
    with tf1.variable_scope(name):
        w = weight('w', [kernel_size, kernel_size, filters, x.shape[-1]], stddev)
        height, width = x.shape[1] * stride, x.shape[2] * stride
        output_shape = tf.stack([tf.shape(x)[0], height, width, filters])
        if fold:  # the output channels are the weights' third axis
            w = w * fold[0][:, None]
        y = tf.nn.conv2d_transpose(x, w, output_shape, strides=stride, padding='SAME')
        y = tf.ensure_shape(y, [None, height, width, filters])
        return tf.nn.bias_add(y, fold[1]) if fold else y


def batch_norm_variables(name, channels):
    """scale, offset, moving_mean, moving_variance of one batch norm."""
    with tf1.variable_scope(name):
        return (tf1.get_variable('scale', [channels], initializer=tf1.ones_initializer()),
                tf1.get_variable('offset', [channels], initializer=tf1.zeros_initializer()),
                tf1.get_variable('moving_mean', [channels], initializer=tf1.zeros_initializer(), trainable=False),
                tf1.get_variable('moving_variance', [channels], initializer=tf1.ones_initializer(), trainable=False))


def batch_norm(x, name, epsilon):
    """Training batch norm over all axes but the last, with the batch's statistics. Adds the moving averages and
    the batch moments to the MOVING_AVERAGES and BATCH_MOMENTS collections; the training graph turns them into
    one update per moving average (moving_average_updates)."""
    scale, offset, moving_mean, moving_variance = batch_norm_variables(name, x.shape[-1])
    # The fused kernel is the fast path on CPU and GPU; it wants NHWC, so dense features become 1x1 maps.
    x4 = x if x.shape.ndims == 4 else tf.reshape(x, [-1, 1, 1, x.shape[-1]])
    y, mean, variance = tf1.nn.fused_batch_norm(x4, scale, offset, epsilon=epsilon, is_training=True)
    for moving_average, moment in ((moving_mean, mean), (moving_variance, variance)):
        tf1.add_to_collection(MOVING_AVERAGES, moving_average)
        tf1.add_to_collection(BATCH_MOMENTS, moment)
    return tf.reshape(y, tf.shape(x)) if x.shape.ndims != 4 else y


def folded_batch_norm(name, channels, epsilon):
    """Inference batch norm as (multiplier, shift) per channel, from the moving averages: the layer before it
    multiplies its weights and adds the shift (the fold argument of dense, conv2d, deconv2d)."""
    scale, offset, moving_mean, moving_variance = batch_norm_variables(name, channels)
    multiplier = scale * tf.math.rsqrt(moving_variance + epsilon)
    return multiplier, offset - moving_mean * multiplier


def normalized_relu(layer, name, channels, training, epsilon):
    """relu(batch_norm(layer)): layer(fold) is a dense or (transposed) convolution taking folded_batch_norm's
    pair, or None while training, where the batch's statistics normalise its output."""
    if training:
        return tf.nn.relu(batch_norm(layer(None), name, epsilon))
    return tf.nn.relu(layer(folded_batch_norm(name, channels, epsilon)))


# ---------------------------------------------------------------- model

# What the encoder gives of q(z|x) for a batch of images.
Posterior = collections.namedtuple('Posterior', [
    'z_mean', 'z_std',          # the Gaussian N(z_mean, z_std^2): q(z|x) itself, or the base of its flow
    'context',                  # iaf_depth > 0: the features h each IAF step sees beside z; None otherwise
])


def encoder(images, config, training):
    """q(z|x): strided conv -> BN -> ReLU blocks, then dense heads for the posterior mean and stddev (and, with
    iaf_depth > 0, for the context of the flow's steps)."""
    with tf1.variable_scope('encoder', reuse=tf1.AUTO_REUSE):
        k, stddev, epsilon = config['kernel_size'], config['init_stddev'], config['bn_epsilon']
        h = images
        for i, (filters, stride) in enumerate(zip(config['encoder_filters'], config['encoder_strides'])):
            h = normalized_relu(lambda fold: conv2d(h, filters, k, stride, f'conv{i}', stddev, fold), f'bn{i}',
                                filters, training, epsilon)
        h = tf.reshape(h, [-1, int(np.prod(h.shape[1:]))])
        z_mean = dense(h, config['z_dim'], 'z_mean', stddev)
        z_std = tf.nn.softplus(dense(h, config['z_dim'], 'z_std', stddev)) + MIN_STD
        context = tf.nn.elu(dense(h, config['iaf_width'], 'context', stddev)) if config['iaf_depth'] else None
        return Posterior(z_mean, z_std, context)


def decoder(z, config, training):
    """p(x|z): dense -> BN -> ReLU -> reshape, then transposed conv blocks with decoder_strides, and the output
    head: 'dense_sigmoid' (MNIST: BN -> ReLU after the last transposed conv, then a dense layer to the pixels),
    or 'conv_tanh' (CelebA) / 'conv_sigmoid' (the last transposed conv is the output).

    Returns the image-shaped pre-activation; decoded_image() of it is the decoded image (the Gaussian mean,
    or for 'bernoulli' the pixel probabilities).
    """
    with tf1.variable_scope('decoder', reuse=tf1.AUTO_REUSE):
        k, stddev, epsilon = config['kernel_size'], config['init_stddev'], config['bn_epsilon']
        start = config_keys.encoder_output_shape(config)
        units = int(np.prod(start))
        h = normalized_relu(lambda fold: dense(z, units, 'fc', stddev, fold), 'bn_fc', units, training, epsilon)
        h = tf.reshape(h, [-1, *start])
        shape = config_keys.image_shape(config)
        layers = list(zip(config['decoder_filters'], config['decoder_strides']))
        for i, (filters, stride) in enumerate(layers):
            if config['output_head'] != 'dense_sigmoid' and i == len(layers) - 1:
                return deconv2d(h, filters, k, stride, f'deconv{i}', stddev)
            h = normalized_relu(lambda fold: deconv2d(h, filters, k, stride, f'deconv{i}', stddev, fold), f'bn{i}',
                                filters, training, epsilon)
        # The transposed convs overshoot (28 -> 32 for MNIST); a dense layer maps back to the image.
        h = tf.reshape(h, [-1, int(np.prod(h.shape[1:]))])
        logits = dense(h, int(np.prod(shape)), 'output', stddev)
        return tf.reshape(logits, [-1, *shape])


def decoded_image(logits, config):
    """The decoder's output activation: sigmoid to [0, 1] or tanh to [-1, 1], the range of the data."""
    return tf.tanh(logits) if config['output_head'] == 'conv_tanh' else tf.sigmoid(logits)


def fixed_decoder_variance(config):
    """sigma^2 of the 'gaussian' decoder, kl_weight * D / 2 for D pixels: the variance under which the original
    loss, MSE + kl_weight * KL, is kl_weight times the negative ELBO in nats, up to a constant (loss_scale)."""
    return config['kl_weight'] * int(np.prod(config_keys.image_shape(config))) / 2


def loss_scale(config):
    """What one nat of the negative ELBO counts in the loss: kl_weight for 'gaussian' (the original's loss in
    per-pixel MSE units, fixed_decoder_variance), 1 for the likelihoods whose loss is in nats."""
    return config['kl_weight'] if config['likelihood'] == 'gaussian' else 1.0


def decoder_log_variance(config):
    """log sigma^2 of the Gaussian decoder: fixed_decoder_variance for 'gaussian', a learned variable (per pixel
    or global) for 'gaussian_learned', floored at decoder_min_variance."""
    if config['likelihood'] == 'gaussian':
        return tf.constant(np.log(fixed_decoder_variance(config)), tf.float32)
    shape = config_keys.image_shape(config) if config['decoder_variance'] == 'pixel' else []
    with tf1.variable_scope('decoder', reuse=tf1.AUTO_REUSE):
        raw = tf1.get_variable('log_variance', shape, initializer=tf1.zeros_initializer())
    return tf.math.log(config['decoder_min_variance'] + tf.exp(raw))


def log_likelihood(images, logits, config):
    """log p(x|z) in nats, one value per image, under the configured decoder likelihood."""
    axes = [1, 2, 3]
    if config['likelihood'] == 'bernoulli':
        return -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=images, logits=logits), axes)
    log_variance = decoder_log_variance(config)
    squared_error = tf.square(images - decoded_image(logits, config))
    return -0.5 * tf.reduce_sum(np.log(2 * np.pi) + log_variance + squared_error * tf.exp(-log_variance), axes)


def kl_per_dimension(z_mean, z_std):
    """KL(N(z_mean, z_std^2) || N(0, 1)) of each latent dimension of each example, in closed form."""
    return 0.5 * (tf.square(z_mean) + tf.square(z_std) - 2.0 * tf.math.log(z_std) - 1.0)


def kl_divergence(z_mean, z_std):
    """KL(N(z_mean, z_std^2) || N(0, I)) summed over latent dimensions: one value per example."""
    return tf.reduce_sum(kl_per_dimension(z_mean, z_std), axis=1)


def normal_log_density(z, mean, std):
    """log N(z; mean, std^2) summed over the last axis."""
    return -0.5 * tf.reduce_sum(np.log(2 * np.pi) + 2.0 * tf.math.log(std) + tf.square((z - mean) / std), axis=-1)


def flows(config):
    """Whether q(z|x) or p(z) is a flow (autoregressive_flows.py): the rate is then an expectation, estimated from
    samples, where the Gaussian posterior's KL from N(0, I) has a closed form."""
    return bool(config['iaf_depth'] or config['prior_flow_depth'])


def flat_latents(function, z, config):
    """function of [rows, z_dim] applied to z of any leading shape, its outputs shaped like z."""
    outputs = function(tf.reshape(z, [-1, config['z_dim']]))
    return [tf.reshape(output, tf.shape(z)) for output in outputs]


def prior_log_density(z, config):
    """[..., z_dim] each dimension's term of log p(z): N(0, I), or with prior_flow_depth > 0 the MAF prior's."""
    if not config['prior_flow_depth']:
        return -0.5 * (np.log(2 * np.pi) + tf.square(z))
    return flat_latents(lambda flat: [autoregressive_flows.prior_log_density(
        flat, config['prior_flow_depth'], config['prior_flow_width'])], z, config)[0]


def prior_sample(noise, config):
    """Latents of the prior from noise ~ N(0, I) [batch, z_dim]: the noise itself, or through the MAF prior."""
    return autoregressive_flows.prior_sample(noise, config['prior_flow_depth'], config['prior_flow_width'])


def posterior_sample(posterior, noise, config):
    """Samples of q(z|x) by the reparameterisation z0 = z_mean + z_std * noise (noise [..., batch, z_dim] standard
    normal, the posterior broadcast against it), carried through the IAF's steps when iaf_depth > 0. Returns z and
    each dimension's share of log q(z|x) - log p(z), both shaped like the noise: summed over the dimensions, a
    one-sample estimate of the KL (the IAF paper's rate, which free bits floor per dimension too)."""
    z_mean, z_std, context = posterior
    z = z_mean + z_std * noise
    log_q = -0.5 * (np.log(2 * np.pi) + 2.0 * tf.math.log(z_std) + tf.square(noise))
    if config['iaf_depth']:
        context = tf.broadcast_to(context, tf.concat([tf.shape(z)[:-1], tf.shape(context)[-1:]], 0))
        flat_context = tf.reshape(context, [-1, config['iaf_width']])
        z, log_gates = flat_latents(lambda flat: autoregressive_flows.posterior_flow(
            flat, flat_context, config['iaf_depth'], config['iaf_width']), z, config)
        log_q -= log_gates
    return z, log_q - prior_log_density(z, config)


def posterior_centre(posterior, config):
    """The one latent an image is encoded to (reconstructions, the samplers' posterior means): z_mean, or with
    iaf_depth > 0 z_mean carried through the flow (the image of the base's mode)."""
    if not config['iaf_depth']:
        return posterior.z_mean
    return autoregressive_flows.posterior_flow(posterior.z_mean, posterior.context, config['iaf_depth'],
                                               config['iaf_width'])[0]


def image_dimension_rates(posterior, sample_rates, config):
    """[batch, z_dim] rate of each latent dimension of each image: KL(q(z_j|x) || N(0, 1)) in closed form for the
    Gaussian posterior and prior; with a flow (flows) the mean over the samples ([k, batch, z_dim],
    posterior_sample's) of their shares of log q(z|x) - log p(z)."""
    if not flows(config):
        return kl_per_dimension(posterior.z_mean, posterior.z_std)
    return tf.reduce_mean(sample_rates, axis=0)


def tiled_posterior_samples(images, posterior, noise, config):
    """k samples of q(z|x) per image (noise: [k, batch, z_dim] standard normal; posterior_sample). Returns the
    images and the samples flattened to k * batch rows, sample-major (each image beside its sample), and each
    sample's per-dimension rates, [k, batch, z_dim]: log p(z) - log q(z|x) is minus their sum."""
    z, rates = posterior_sample(posterior, noise, config)
    k, batch = tf.shape(noise)[0], tf.shape(noise)[1]
    flat = lambda t: tf.reshape(t, tf.concat([[k * batch], tf.shape(t)[2:]], 0))
    tiled = tf.tile(images[None], [k] + [1] * images.shape.ndims)
    return flat(tiled), flat(z), rates


def importance_log_weights(images, posterior, log_likelihood_fn, noise, config):
    """[k, batch] log w = log p(x|z) + log p(z) - log q(z|x) for the samples of q(z|x) posterior_sample makes of
    noise [k, batch, z_dim] (the flow's log-determinants included).

    Their mean over k estimates the ELBO; log-mean-exp over k is the importance-weighted bound of
    Burda et al. (2015), which tightens towards log p(x) as k grows. log_likelihood_fn(images, z) gives
    log p(x|z) for a flat batch.
    """
    flat_images, flat_z, rates = tiled_posterior_samples(images, posterior, noise, config)
    log_prior_ratio = -tf.reduce_sum(rates, -1)
    return tf.reshape(log_likelihood_fn(flat_images, flat_z), tf.shape(log_prior_ratio)) + log_prior_ratio


def log_mean_exp(values, axis=0):
    return tf.reduce_logsumexp(values, axis) - tf.math.log(tf.cast(tf.shape(values)[axis], values.dtype))


def kl_term(rates, free_bits):
    """The KL term of the loss, batch-mean nats, from the [batch, z_dim] rates (image_dimension_rates): their sum, or
    with free bits (Kingma et al. 2016) the sum over latent dimensions of max(free_bits, the dimension's batch-mean
    rate), so a dimension below free_bits nats gets no gradient from it (it may carry that much information for
    free)."""
    if not free_bits:
        return tf.reduce_mean(tf.reduce_sum(rates, axis=1))
    return tf.reduce_sum(tf.maximum(float(free_bits), tf.reduce_mean(rates, axis=0)))


# What build_vae computes on a batch of images. Rate and distortion as in Alemi et al. 2018 (and TFP's VAE
# example): the ELBO is -(distortion + rate), both in nats, whatever the loss's units.
Endpoints = collections.namedtuple('Endpoints', [
    'z_mean', 'z_std',          # the Gaussian of q(z|x) = N(z_mean, z_std^2), per image (the flow's base with IAF)
    'z',                        # the latents decoded: train_samples samples of q(z|x) per image in training
                                # (sample-major, tiled_posterior_samples), posterior_centre otherwise
    'logits', 'reconstruction',  # the decoder's pre-activation and its image (decoded_image of the logits), per z
    'distortion',               # batch-mean -log p(x|z) in nats under the decoder likelihood, over the samples
    'rate',                     # batch-mean KL(q(z|x) || p(z)) in nats (the true KL, whatever the schedule):
                                # closed form, or with a flow the mean of log q(z|x) - log p(z) over the samples
    'dimension_rates',          # [batch, z_dim] its share in each latent dimension (image_dimension_rates)
    'mean_squared_error',       # of the reconstructions, per pixel (the 'gaussian' loss's distortion term)
    'loss',                     # what training minimises (build_vae's docstring)
])


def build_vae(images, config, training, annealing=1.0, posterior=None):
    """The VAE on a batch of images in the data's pixel range (config_keys.pixel_range). Training decodes
    train_samples reparameterised samples of q(z|x) per image; inference decodes posterior_centre, so
    reconstructions are deterministic.

    With likelihood 'gaussian' the loss is the original's: per-pixel MSE + kl_weight * batch-mean KL, the
    negative ELBO of a Gaussian decoder with fixed variance kl_weight * D / 2 (D pixels) times kl_weight
    (loss_scale), up to a constant. With 'gaussian_learned' or 'bernoulli' it is the batch mean of the negative
    ELBO in nats, distortion + rate. The KL term is multiplied by `annealing` (kl_annealing's factor in [0, 1])
    and floored by free_bits; the distortion is averaged over the samples.

    Objective 'iwae' (Burda et al. 2015) adds the batch mean of mean_k(log w) - log mean_k(w), with log w =
    log p(x|z) + annealing * (log p(z) - log q(z|x)): that turns the ELBO into the negative importance-weighted
    bound of k samples (in expectation; scaled like the loss for 'gaussian'), and is exactly 0 for k = 1.

    posterior: the encoder's Posterior of these images, where the caller has built it already.
    """
    posterior = posterior or encoder(images, config, training)
    k = config['train_samples'] if training else 1
    if training:
        noise = tf.random.normal(tf.concat([[k], tf.shape(posterior.z_mean)], 0))
        flat_images, z, sample_rates = tiled_posterior_samples(images, posterior, noise, config)
    else:
        flat_images, z = images, posterior_centre(posterior, config)
        # the rate under a flow is an expectation: one sample of it (the Gaussians' is in closed form)
        sample_rates = posterior_sample(posterior, tf.random.normal(tf.shape(posterior.z_mean))[None],
                                        config)[1] if flows(config) else None
    logits = decoder(z, config, training)
    reconstruction = decoded_image(logits, config)
    mean_squared_error = tf.reduce_mean(tf.square(flat_images - reconstruction))
    rates = image_dimension_rates(posterior, sample_rates, config)
    rate = tf.reduce_mean(tf.reduce_sum(rates, axis=1))
    kl_loss = annealing * kl_term(rates, config['free_bits'] if training else 0)
    log_px = log_likelihood(flat_images, logits, config)
    distortion = -tf.reduce_mean(log_px)
    if config['likelihood'] == 'gaussian':
        loss = mean_squared_error + loss_scale(config) * kl_loss
    else:
        loss = distortion + kl_loss
    if training and config['objective'] == 'iwae':
        log_weights = tf.reshape(log_px, [k, -1]) - annealing * tf.reduce_sum(sample_rates, -1)
        gap = tf.reduce_mean(tf.reduce_mean(log_weights, 0) - log_mean_exp(log_weights, 0))
        loss += loss_scale(config) * gap
    return Endpoints(posterior.z_mean, posterior.z_std, z, logits, reconstruction, distortion, rate, rates,
                     mean_squared_error, loss)


def fixed_latents(config, count):
    """The same `count` N(0, I) draws for every frame of a run (seeded): the prior's samples, or with a flow prior
    the noise prior_latents turns into them."""
    return np.random.RandomState(config['seed']).standard_normal((count, config['z_dim'])).astype(np.float32)


# What build_inference_graph computes: feed images (and k) or z.
InferenceGraph = collections.namedtuple('InferenceGraph', [
    'images',                   # placeholder: a batch of images
    'reconstruction',           # their reconstructions: the decoded z_mean
    'z_mean', 'z_std',          # the posterior: its mean and stddev; with IAF, z_mean is posterior_centre (the
                                # base's mean through the flow) and z_std the base's stddev
    'negative_elbo',            # per image, a one-sample estimate in nats under the decoder likelihood
    'kl_per_dimension',         # [batch, z_dim] the rate of each dimension in nats (image_dimension_rates):
                                # KL(q(z_j|x) || N(0, 1)), or with a flow the shares of the negative_elbo's sample
    'k', 'noise_seed',          # placeholders: samples per image, and the [2] seed of their noise
    'log_weights',              # [k, batch] importance log weights (importance_log_weights); the same seed
                                # gives the same samples, whatever ran before
    'z', 'generation',          # placeholder: latents, and their decoded images
    'prior_noise', 'prior_z',   # placeholder: N(0, I) noise, and the prior's latents of it (prior_sample)
])


def build_inference_graph(config):
    """Reconstructing, scoring and decoding with the moving averages of batch norm (training=False)."""
    tf1.set_random_seed(config['seed'])  # op determinism refuses unseeded random ops, initialisers included
    images = tf1.placeholder(tf.float32, [None, *config_keys.image_shape(config)], name='eval_images')
    z = tf1.placeholder(tf.float32, [None, config['z_dim']], name='eval_z')
    k = tf1.placeholder(tf.int32, [], name='k')
    noise_seed = tf1.placeholder_with_default(tf.constant([0, 0], tf.int64), [2], name='noise_seed')
    posterior = encoder(images, config, training=False)
    model = build_vae(images, config, training=False, posterior=posterior)
    decode_log_likelihood = lambda x, latents: log_likelihood(x, decoder(latents, config, training=False), config)
    z_sample, sample_rates = posterior_sample(posterior, tf.random.normal(tf.shape(posterior.z_mean)), config)
    rates = image_dimension_rates(posterior, sample_rates[None], config)
    negative_elbo = tf.reduce_sum(rates, axis=1) - decode_log_likelihood(images, z_sample)
    noise = tf.random.stateless_normal(tf.concat([[k], tf.shape(posterior.z_mean)], 0), noise_seed)
    log_weights = importance_log_weights(images, posterior, decode_log_likelihood, noise, config)
    generation = decoded_image(decoder(z, config, training=False), config)
    prior_noise = tf1.placeholder(tf.float32, [None, config['z_dim']], name='prior_noise')
    return InferenceGraph(images, model.reconstruction, model.z, posterior.z_std, negative_elbo, rates,
                          k, noise_seed, log_weights, z, generation, prior_noise, prior_sample(prior_noise, config))


def prior_latents(sess, outputs, noise):
    """The prior's latents of N(0, I) noise (fixed_latents, say), through an InferenceGraph's session."""
    return sess.run(outputs.prior_z, {outputs.prior_noise: noise})


def run_in_batches(sess, tensors, placeholder, inputs, batch_size=500):
    """sess.run(tensors) over inputs fed in batches, each output concatenated along the first axis
    (tensors: one tensor, or a list of them for a list of arrays)."""
    batches = [sess.run(tensors, {placeholder: inputs[i:i + batch_size]}) for i in range(0, len(inputs), batch_size)]
    if isinstance(tensors, list):
        return [np.concatenate(outputs) for outputs in zip(*batches)]
    return np.concatenate(batches)


def restored_model(config, checkpoint=None, build=build_inference_graph):
    """(session, outputs, saver): build(config)'s outputs (build_inference_graph's, by default) in a finalized graph
    of their own, with a Saver of the model's variables alone (no step counter, no optimizer slots), and a
    session holding checkpoint's weights (shape-checked, run_folder.restore_checkpoint) when one is given. What
    vae_inference.py restores, exports and evaluates, and what scores a mixed-precision run in float32."""
    graph = tf.Graph()
    with graph.as_default():
        outputs = build(config)
        saver = tf1.train.Saver()
    graph.finalize()
    sess = tf1.Session(graph=graph, config=deploy.session_config(config))
    if checkpoint:
        try:
            run_folder.restore_checkpoint(sess, saver, checkpoint, config)
        except BaseException:
            sess.close()
            raise
    return sess, outputs, saver


# ---------------------------------------------------------------- training graph
# Nothing below is needed to use a trained model: vae_inference.py uses the model above.

def moving_average_updates(config):
    """One update per batch-norm moving average, towards the mean over towers of their batch moments (with
    one tower, the usual exponential moving average of the batch moments)."""
    moments = {}
    for variable, value in zip(tf1.get_collection(MOVING_AVERAGES), tf1.get_collection(BATCH_MOMENTS)):
        moments.setdefault(variable.name, (variable, []))[1].append(value)
    decay = 1.0 - config['bn_momentum']
    return [tf1.assign_sub(variable, (variable - tf.add_n(values) / len(values)) * decay)
            for variable, values in moments.values()]


def kl_annealing(config, epoch):
    """The weight of the KL term at a (fractional) epoch, in [0, 1]: 'constant' 1; 'linear' warm-up from 0 to 1
    over kl_warmup_epochs (Bowman et al. 2016; Sonderby et al. 2016); 'cyclical' (Fu et al. 2019) restarts every
    kl_cycle_epochs, rising from 0 to 1 over the first kl_cycle_ramp of each cycle and then holding 1. A function
    of the global step only, so a resumed run and every worker of a cluster agree on it."""
    if config['kl_schedule'] == 'linear':
        return tf.minimum(1.0, epoch / config['kl_warmup_epochs']) if config['kl_warmup_epochs'] else tf.constant(1.0)
    if config['kl_schedule'] == 'cyclical':
        position = tf.math.floormod(epoch, config['kl_cycle_epochs']) / config['kl_cycle_epochs']
        return tf.minimum(1.0, position / config['kl_cycle_ramp'])
    return tf.constant(1.0)


def learning_rate(config, epoch):
    """Adam's step size at a (fractional) epoch: learning_rate * learning_rate_decay ** epoch."""
    if config['learning_rate_decay'] == 1:
        return tf.constant(config['learning_rate'])
    return config['learning_rate'] * tf.pow(config['learning_rate_decay'], epoch)


# What build_training_graph returns.
TrainingGraph = collections.namedtuple('TrainingGraph', [
    'input',                    # the datasets.TrainingInput (None with feed_input)
    'images',                   # the batch trained on: the input's, or a placeholder fed per step (feed_input)
    'endpoints',                # build_vae's Endpoints, merged over the towers
    'train_op', 'finite',       # one update; whether this step's loss and gradients were finite
    'weights_finite',           # whether every float variable is finite (checked before each save)
    'global_step', 'step_after_update',  # the update count, and its value once this step's update is applied
    'annealing', 'learning_rate',  # this step's KL annealing factor (kl_annealing) and step size
    'summaries',                # the TensorBoard summaries of a step: scalars, and histograms of the posterior
    'optimizer',                # Adam (in SyncReplicasOptimizer on a synchronous cluster)
    'inference',                # build_inference_graph's outputs, sharing the weights
    'init', 'saver',            # initialise all variables; save and restore them
])


def build_training_graph(config, steps_per_epoch, train=None, cluster=None):
    """tf.data input of `train` (load_dataset's), the training VAE on num_clones towers, Adam, the step counter,
    summaries and the inference outputs in one graph. steps_per_epoch (in global steps) turns the step into the
    epoch the schedules follow. train=None: a placeholder fed per step instead (for the benchmark and tests).
    With a cluster ({'ps': [...], 'worker': [...]}), this worker reads its own shard of the data, and with
    sync_replicas the optimizer waits for a gradient from every worker before each update."""
    tf1.set_random_seed(config['seed'])  # seeds the initial weights and the sampling noise
    if train is None:
        training_input = None
        images = tf1.placeholder(tf.float32, [config['batch_size'], *config_keys.image_shape(config)], name='images')
    else:
        training_input = datasets.input_pipeline(config, train,
                                                 (len(cluster['worker']), config['task']) if cluster else None)
        images = training_input.images
    model_input = datasets.training_batch(config, images)

    global_step = tf1.train.get_or_create_global_step()
    epoch = tf.cast(global_step, tf.float32) / steps_per_epoch
    annealing, step_size = kl_annealing(config, epoch), learning_rate(config, epoch)
    optimizer = tf1.train.AdamOptimizer(step_size)
    if config['precision'] == 'mixed_float16':  # float16 gradients underflow: scale the loss, skip overflowed steps
        optimizer = tf1.mixed_precision.MixedPrecisionLossScaleOptimizer(optimizer, 'dynamic')
    optimizer = deploy.replicated_optimizer(optimizer, config, cluster)
    endpoints, gradients = deploy.create_clones(config, model_input,
                                                lambda share: build_vae(share, config, True, annealing), optimizer)
    finite = tf.math.is_finite(endpoints.loss)
    gradient_norm = tf.linalg.global_norm([g for g, _ in gradients])
    if config['precision'] != 'mixed_float16':  # (with loss scaling an overflowed gradient only skips its step)
        finite = tf.logical_and(finite, tf.math.is_finite(gradient_norm))
    if config['clip_gradient_norm']:
        clipped, _ = tf.clip_by_global_norm([g for g, _ in gradients], config['clip_gradient_norm'], gradient_norm)
        gradients = list(zip(clipped, [v for _, v in gradients]))
    with tf.control_dependencies(moving_average_updates(config)):
        train_op = optimizer.apply_gradients(gradients, global_step=global_step)
    with tf.control_dependencies([train_op]):  # the step count once this step's update has been applied
        step_after_update = tf.identity(global_step.read_value())
    kl_dimensions = tf.reduce_mean(endpoints.dimension_rates, axis=0)
    # A histogram op fails on NaN; zeros keep the step running to the loop's own check, which stops training
    # before the summary is written.
    finite_or_zero = lambda t: tf.where(tf.math.is_finite(t), t, tf.zeros_like(t))
    summaries = tf1.summary.merge([tf1.summary.histogram('z_mean', finite_or_zero(endpoints.z_mean)),
                                   tf1.summary.histogram('z_std', finite_or_zero(endpoints.z_std)),
                                   tf1.summary.histogram('kl_per_dimension', finite_or_zero(kl_dimensions)),
                                   *[tf1.summary.scalar(f'kl_dimension/{i:03d}', kl_dimensions[i])
                                     for i in range(config['z_dim'])],
                                   tf1.summary.scalar('loss', endpoints.loss),
                                   tf1.summary.scalar('distortion', endpoints.distortion),
                                   tf1.summary.scalar('rate', endpoints.rate),
                                   tf1.summary.scalar('mean_squared_error', endpoints.mean_squared_error),
                                   # the KL term's multiplier in the loss: the annealing times loss_scale
                                   tf1.summary.scalar('kl_coefficient', annealing * loss_scale(config)),
                                   tf1.summary.scalar('learning_rate', step_size),
                                   # before clip_gradient_norm (the loss-scaled one under mixed_float16)
                                   tf1.summary.scalar('gradient_norm', finite_or_zero(gradient_norm))])
    inference = build_inference_graph(config)
    weights_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(variable)) for variable in tf1.global_variables()
                                    if variable.dtype.base_dtype.is_floating])
    return TrainingGraph(training_input, images, endpoints, train_op, finite, weights_finite, global_step,
                         step_after_update, annealing, step_size, summaries, optimizer, inference,
                         tf1.global_variables_initializer(), tf1.train.Saver(max_to_keep=None))


# ---------------------------------------------------------------- saves

def save_grids(sess, model, config, epoch, fixed_images, latents, writer):
    """The op-real / op-recons / op-gen grids of the fixed images and latents, as PNG and in TensorBoard."""
    inference = model.inference
    reconstructions, generations, step = sess.run(
        [inference.reconstruction, inference.generation, model.global_step],
        {inference.images: fixed_images, inference.z: prior_latents(sess, inference, latents)})
    for key, images in (('real_directory', fixed_images), ('recons_directory', reconstructions),
                        ('gen_directory', generations)):
        path = os.path.join(run_folder.run_path(config, key), f'epoch_{epoch:04d}.png')
        pictures.save_grid(path, images, GRID_SIDE, GRID_SIDE, title=f'epoch {epoch}',
                           value_range=config_keys.pixel_range(config))
        writer.add_summary(pictures.png_summary(config[key], path), step)
    writer.flush()


def float32_restorer(config):
    """restore(checkpoint) -> (session, InferenceGraph): a float32 restored_model, for the test ELBO of a
    mixed-precision run (its training session runs under the rewrite), restored from each checkpoint as it is
    saved (which also shows that checkpoint restores in float32)."""
    sess, inference, saver = restored_model(config)

    def restore(checkpoint):
        run_folder.restore_checkpoint(sess, saver, checkpoint, config)
        return sess, inference
    return restore


def evaluation_set(config, data):
    """What every save looks at, made once per run: the grids' fixed images and latents, the test images, and
    for mixed precision the float32 graph the test ELBO is computed in."""
    return {'grid_images': datasets.evaluation_images(config, data['grid_images'])[:GRID_SIDE * GRID_SIDE],
            'latents': fixed_latents(config, GRID_SIDE * GRID_SIDE),
            'test_images': datasets.evaluation_images(config, data['test_images']),
            'float32': None if config['precision'] == 'float32' else float32_restorer(config)}


def saves_after(config, epoch):
    """Whether training saves after this epoch: epoch 0, every save_every epochs, and the last."""
    return epoch % config['save_every'] == 0 or epoch == config['num_epoch'] - 1


def save_checkpoint(sess, model, config, name):
    """The variables as checkpoint <name> in the model folder; a failed write (a full disk, say) is a one-line
    error. TensorFlow writes under temporary names and renames the .index last, so the newer checkpoints on disk
    are whole whatever happens."""
    path = os.path.join(run_folder.run_path(config, 'model_directory'), name)
    if os.path.exists(path + '.index') and run_folder.checkpoint_problem(path):  # skipped at resume: kept aside
        aside = run_folder.keep_aside(path)
        print(f'warning: {path} does not read back; kept as {aside}.* and written again')
    if os.path.exists(path + '.index'):
        raise UserError(f'{path} exists already and is never replaced (another run\'s checkpoint in this folder?); '
                        'move it away, or pass --fresh for a new run folder')
    try:  # write_state=False: the newest checkpoint is found by its global step, not a state file
        return model.saver.save(sess, path, write_meta_graph=False, write_state=False)
    except tf.errors.OpError as error:
        raise UserError(f'cannot write checkpoint {path} ({process.error_line(error)}); free some space '
                        'or choose a writable --run_directory, then run again: training resumes from the newest '
                        'complete checkpoint') from None


def save_epoch(sess, model, config, evaluation, epoch, writer, non_finite):
    """After a saved epoch: checkpoint model_<epoch>, the image grids, and the test negative ELBO. A test ELBO that
    is not finite (the decoder's variance or the weights out of float32's range) stops the run like a non-finite
    loss (non_finite(what) is that error), and its checkpoint is not kept."""
    def test_negative_elbo(scoring, inference):
        return run_in_batches(scoring, inference.negative_elbo, inference.images, evaluation['test_images']).mean()
    if evaluation['float32'] is None:  # scored before the checkpoint is written
        test_nelbo = test_negative_elbo(sess, model.inference)
        if not np.isfinite(test_nelbo):
            raise non_finite(f'the test negative ELBO became {test_nelbo}')
    path = save_checkpoint(sess, model, config, f'model_{epoch}')
    if evaluation['float32'] is not None:  # a mixed-precision run is scored in float32, from its checkpoint
        test_nelbo = test_negative_elbo(*evaluation['float32'](path))
        if not np.isfinite(test_nelbo):
            for file in glob.glob(glob.escape(path) + '.*'):
                os.remove(file)
            raise non_finite(f'the test negative ELBO (float32) became {test_nelbo}')
    step = sess.run(model.global_step)
    save_grids(sess, model, config, epoch, evaluation['grid_images'], evaluation['latents'], writer)
    writer.add_summary(tf1.Summary(value=[tf1.Summary.Value(tag='test_negative_elbo_nats', simple_value=test_nelbo)]),
                       step)
    print(f'saved model_{epoch}; test negative ELBO {test_nelbo:.2f} nats (one sample per image)')


def save_interrupted(sess, model, config, step):
    """Checkpoint interrupted_<step> mid-epoch, then drop older interrupted_* checkpoints it supersedes."""
    model_directory = run_folder.run_path(config, 'model_directory')
    path = save_checkpoint(sess, model, config, f'interrupted_{step}')
    for old_step, old_prefix in run_folder.list_checkpoints(model_directory, 'interrupted').items():
        if old_step < step:
            for file in glob.glob(glob.escape(old_prefix) + '.*'):
                os.remove(file)
    return path


# ---------------------------------------------------------------- training loop

EPOCH_LINE_TERMS = ('loss', 'distortion', 'rate')  # the Endpoints the epoch line averages, in its order


def epoch_line(epoch, mean, images_per_second, annealing=None):
    """The line printed after each epoch (the benchmarks and tests read it): the epoch's mean loss, distortion
    and rate (nats), and with a KL schedule the annealing factor of its last step."""
    return (f'epoch {epoch:3d}  loss {mean[0]:.5f}  distortion {mean[1]:.3f}  rate {mean[2]:.3f}  '
            f'{images_per_second:.0f} images/s' + ('' if annealing is None else f'  kl annealing {annealing:.4f}'))


# What differs between one process and a cluster worker, for the one training loop.
Role = collections.namedtuple('Role', [
    'chief',            # writes checkpoints, summaries, grids and config.json, and handles SIGINT / SIGTERM
    'steps_per_epoch', 'last_step',  # in global steps (updates of the weights)
    'restarts_input',   # one process starts its input at each epoch (TrainingInput.feed); a cluster worker's
                        # endless shard is started with its session
    'label',            # appended to the epoch line: '' or ' on worker <task>'
    'resume_hint',      # how to go on after a SIGINT / SIGTERM save
    'restart_hint',     # how to go on after a non-finite stop
])


def non_finite_error(config, role, what, step):
    """The one-line stop for a non-finite loss, gradient or weight: where, the checkpoint kept, what to do."""
    last_good = run_folder.latest_checkpoint(config)[0] if role.chief else "the chief's newest"
    return UserError(f'{what} at step {step} of epoch {step // role.steps_per_epoch}{role.label}; nothing was saved '
                     f'after it, the last good checkpoint is {last_good}; lower --learning_rate and '
                     f'{role.restart_hint}')


def training_loop(sess, model, config, data, role, stop_signal):
    """Steps until the run's last global step. Whenever a step ends an epoch: the epoch line, and on the chief
    model_<epoch> and its pictures when saves_after says so. A non-finite loss or gradient stops before anything
    non-finite is saved; a signal saves interrupted_<step> and exits with 128 + signal.
    Returns (per-epoch mean losses, steps run here, the global step reached)."""
    step = int(sess.raw(lambda s: s.run(model.global_step)))
    per_epoch, every = role.steps_per_epoch, config['summary_every']
    writer = tf1.summary.FileWriter(run_folder.run_path(config, 'log_directory'), model.global_step.graph) \
        if role.chief else None
    evaluation = evaluation_set(config, data) if role.chief else None
    fetches = {'train': model.train_op, 'finite': model.finite, 'step': model.step_after_update,
               'annealing': model.annealing,
               'terms': [getattr(model.endpoints, term) for term in EPOCH_LINE_TERMS]}
    scheduled = config['kl_schedule'] != 'constant'
    epoch_losses, totals, steps_run, steps_here = [], np.zeros(len(EPOCH_LINE_TERMS)), 0, 0
    next_summary = -(-step // every) * every  # summaries at every multiple of summary_every that a step starts at

    def begin_epoch(epoch, position):  # the input at this step of the epoch, its clock and its progress bar
        if role.restarts_input:
            sess.raw(lambda s: s.run(model.input.initializer, model.input.feed(epoch, position)))
        return time.perf_counter(), tqdm(total=per_epoch, initial=position, desc=f'epoch {epoch}', leave=False,
                                         file=sys.stdout, disable=None)

    start, bar = begin_epoch(step // per_epoch, step % per_epoch)
    try:
        while step < role.last_step and not sess.should_stop():
            summarise = role.chief and step >= next_summary
            values = sess.run({**fetches, 'summaries': model.summaries} if summarise else fetches)
            losses, new_step = np.array(values['terms']), int(values['step'])
            if not values['finite']:
                raise non_finite_error(config, role, f'the loss or its gradients became non-finite (loss {losses[0]})',
                                       step)
            if summarise:
                writer.add_summary(values['summaries'], step)
                next_summary = (step // every + 1) * every
            totals, steps_run, steps_here = totals + losses, steps_run + 1, steps_here + 1
            interrupted = bool(stop_signal)  # during this step; one during the saves below waits for the next step
            ended = range(step // per_epoch, new_step // per_epoch)  # the epochs this step ended
            # The check above comes before the update: the update itself is checked before anything is saved.
            saving = role.chief and (interrupted or any(saves_after(config, epoch) for epoch in ended))
            if saving and not sess.raw(lambda s: s.run(model.weights_finite)):
                raise non_finite_error(config, role, 'the weights became non-finite in the update', step)
            bar.update(new_step - step)
            bar.set_postfix(loss=f'{totals[0] / steps_run:.5f}')
            for epoch in ended:
                bar.close()
                if steps_run:
                    epoch_losses.append(totals[0] / steps_run)
                    images_per_second = steps_run * config['batch_size'] / (time.perf_counter() - start)
                    print(epoch_line(epoch, totals / steps_run, images_per_second,
                                     values['annealing'] if scheduled else None) + role.label, flush=True)
                if role.chief and saves_after(config, epoch):
                    sess.raw(lambda s: save_epoch(s, model, config, evaluation, epoch, writer,
                                                  lambda what: non_finite_error(config, role, what, step)))
                totals, steps_run = np.zeros(len(EPOCH_LINE_TERMS)), 0
                start, bar = begin_epoch(epoch + 1, 0) if new_step < role.last_step else (start, bar)
            step = new_step
            if interrupted:
                path = sess.raw(lambda s: save_interrupted(s, model, config, step))
                print(f'\n{signal.Signals(stop_signal[0]).name}: saved {path} after step {step}; {role.resume_hint}')
                raise SystemExit(128 + stop_signal[0])
    finally:
        bar.close()
        if writer:
            writer.close()
    return epoch_losses, steps_here, step


def session_and_role(config, data, graph, model, cluster, server, checkpoint, steps_per_epoch):
    """The session this process trains in and its Role: one process starts its input at each epoch; a cluster
    worker's input is its endless shard, started with the session."""
    last_step = config['num_epoch'] * steps_per_epoch
    if not cluster:
        return deploy.local_session(config, graph, model, checkpoint), Role(
            True, steps_per_epoch, last_step, True, '', 'run the same command to resume from there',
            'run again to resume from it')
    task, workers, chief = config['task'], len(cluster['worker']), deploy.is_chief(config, cluster)
    restart = ' after the parameter servers (synchronous mode)' if config['sync_replicas'] else ''
    print(f'worker {task} of {workers} ({"chief" if chief else "not chief"}) on {cluster["worker"][task]}: '
          f'{len(data["train"])} images, {steps_per_epoch} steps of {config_keys.images_per_update(config)} '
          f'images an epoch, {"synchronous" if config["sync_replicas"] else "asynchronous"} updates', flush=True)
    return deploy.cluster_session(config, cluster, server, graph, model, checkpoint, last_step), Role(
        chief, steps_per_epoch, last_step, False, f' on worker {task}',
        f'start the chief again{restart} to resume from there', 'start the cluster again')


def training_phases(config):
    """The configs a run trains in, in order. With objective 'iwae' and iwae_start_epoch E > 0: the one-sample
    ELBO up to epoch E, then the IWAE bound to num_epoch (the schedules are functions of the global step, so they
    run on across the switch); a run of E epochs or fewer is all ELBO. Otherwise config alone."""
    start = config['iwae_start_epoch']
    if config['objective'] != 'iwae' or not start:
        return [config]
    elbo = dict(config, objective='elbo', train_samples=1, num_epoch=min(start, config['num_epoch']))
    return [elbo, config] if start < config['num_epoch'] else [elbo]


def train(config, data, cluster=None):
    """Train (or resume) the run in config['run_directory'] on data['train']; returns the per-epoch mean losses
    this process saw.

    One process, or with a cluster ({'ps': [...], 'worker': [...]}) one worker of between-graph replication:
    each worker builds its own graph with the variables on the parameter servers and trains on its own shard of
    the data. With sync_replicas, every update averages a gradient from each worker (a step is worker_replicas *
    batch_size images); without, each worker's gradient is applied as it comes. The chief (worker 0) alone
    restores and writes checkpoints, summaries, grids and config.json; a worker that stops can be started again
    and rejoins. SIGINT / SIGTERM on the chief finish the current step, save interrupted_<step> and exit with
    status 128 + signal; a one-process run resumes inside its epoch at the same shuffled position.
    Each of training_phases builds its own graph and resumes from the checkpoint the one before left.
    """
    phases = training_phases(config)
    if cluster and len(phases) > 1:
        raise UserError(f'iwae_start_epoch {config["iwae_start_epoch"]} needs one process (a cluster cannot rebuild '
                        f'its graphs together); train the cluster with --objective elbo --num_epoch '
                        f'{config["iwae_start_epoch"]}, then again with --objective iwae --iwae_start_epoch 0')
    chief = deploy.is_chief(config, cluster)
    steps_per_epoch = config_keys.steps_per_epoch(config, len(data['train']))
    if chief:
        run_folder.check_epoch_length(config, steps_per_epoch)
    print(deploy.precision_line(config), flush=True)
    server = deploy.start_server(config, cluster) if cluster else None
    if chief:
        run_folder.make_run_folders(config)
    if config['deterministic']:
        tf.config.experimental.enable_op_determinism()
    if phases[-1] is not config:
        print(f'objective: the one-sample ELBO for all {config["num_epoch"]} epochs (the IWAE bound would start at '
              f'epoch {config["iwae_start_epoch"]}, iwae_start_epoch)', flush=True)
    epoch_losses = []
    # One collection of SIGINT / SIGTERM for every phase: a signal between two phases is taken at the next step.
    with process.stop_requests(enabled=chief) as stop_signal:
        for phase in phases:
            if len(phases) > 1 and phase is config:
                print(f'objective: the IWAE bound of {config["train_samples"]} samples from epoch '
                      f'{config["iwae_start_epoch"]} (the one-sample ELBO before it)', flush=True)
            epoch_losses += train_phase(phase, config, data, cluster, server, chief, steps_per_epoch, stop_signal,
                                        final=phase is phases[-1])
    return epoch_losses


def train_phase(phase, config, data, cluster, server, chief, steps_per_epoch, stop_signal, final):
    """train's graph, session and loop for one of training_phases (config.json records config, the whole run);
    a phase that is not the last and has ended returns at once."""
    graph = tf.Graph()
    with graph.as_default(), deploy.variable_placement(phase, cluster):
        model = build_training_graph(phase, steps_per_epoch, data['train'], cluster)
    with run_folder.run_folder_lock(config) if chief else contextlib.nullcontext():
        checkpoint = resume_point(phase) if chief else None
        session, role = session_and_role(phase, data, graph, model, cluster, server, checkpoint, steps_per_epoch)
        with session as sess:
            step = int(sess.raw(lambda s: s.run(model.global_step)))
            if chief:
                if step >= role.last_step and not final:
                    return []
                if checkpoint:
                    print(f'resuming {config["run_directory"]} from {checkpoint} (step {step})')
                if step >= role.last_step:  # config.json keeps the values the run was trained with
                    trained = step // steps_per_epoch
                    print(f'{config["run_directory"]} has trained '
                          + (f'all {trained} epochs' if trained == config['num_epoch'] else
                             f'{trained} epochs (step {step}), more than num_epoch {config["num_epoch"]}')
                          + '; raise --num_epoch to go on, or pass --fresh to start a new run')
                    return []
                run_folder.write_run_config(config, steps_per_epoch)
                hparams.write_session_start(config)  # its settings, for TensorBoard's HParams dashboard
            epoch_losses, steps_here, step = training_loop(sess, model, phase, data, role, stop_signal)
    if cluster:
        print(f'worker {config["task"]}: ran {steps_here} steps; the run is at step {step} of {role.last_step}' +
              (f' in {config["run_directory"]}' if chief else ''))
    elif final:
        print(f'trained {config["num_epoch"]} epochs ({step} steps) in {config["run_directory"]}')
    return epoch_losses


def resume_point(config):
    """The checkpoint a training run resumes from (None: a fresh start). The resolved config is the run's own
    (command_line.parse_command_line) and its epoch length was checked (run_folder.check_epoch_length); a folder with a
    config.json but no checkpoint must hold this run's."""
    if not run_folder.has_checkpoints(config['run_directory'], config):
        run_folder.check_run_config_matches(config)
    return run_folder.latest_checkpoint(config)[0]


# vae.py's own command-line flags (every config key is one too): {name: (default, meaning)}, None for a switch.
FLAGS = {'fresh': (None, 'start over in a new run folder (<run_directory>-2, -3, ...), keeping the old one')}


def resolved(argv):
    return command_line.parse_command_line(argv, FLAGS, __doc__.split('\n\n')[0], from_run=True, training=True)


def check_resolution_holds(argv, config, options):
    """The configuration resolved again, now that this process holds the run folder: the first resolution read
    its config.json and checkpoints before the lock, and another process may have trained there since. Any
    difference is refused before anything is loaded or written. (--fresh: the folder it claimed, resolved as is.)"""
    again = [arg for arg in argv if arg != '--fresh'] + ['--run_directory', config['run_directory']] \
        if options['fresh'] else argv
    with contextlib.redirect_stdout(io.StringIO()):  # its lines were printed the first time
        if resolved(again)[0] != config:
            raise UserError(f'{config["run_directory"]} changed while this command started (another process trained '
                            'in it); run the command again to go on from what it holds now')


def main(argv):
    config, options = resolved(argv)
    cluster = deploy.cluster_from_config(config)
    if cluster and config['job_name'] == 'ps':
        return deploy.serve_parameters(config, cluster)
    if not deploy.is_chief(config, cluster):
        return train(config, datasets.load_dataset(config), cluster)
    try:  # what can be refused before the run folder is made: the precision, the data, the epoch length
        deploy.precision_line(config)
        data = datasets.load_dataset(config)
        config_keys.steps_per_epoch(config, len(data['train']))
    except BaseException:
        if options['fresh'] and os.path.isdir(config['run_directory']) and not os.listdir(config['run_directory']):
            os.rmdir(config['run_directory'])  # the folder --fresh claimed, given back empty
        raise
    run_folder.make_run_folders(config)
    with run_folder.run_folder_lock(config):  # held from here to the end of training
        check_resolution_holds(argv, config, options)
        command_line.announce_changes(config)
        train(config, data, cluster)


if __name__ == '__main__':
    process.exit_on_user_error(lambda: main(sys.argv[1:]))
