"""Inverse autoregressive flow (Kingma et al. 2016, arXiv:1606.04934) on the posterior q(z|x): the `iaf_depth`
steps vae.py's encoder adds after its Gaussian.

    z, log_gates = iaf.flow(z0, context, depth, width)   # z0 = z_mean + z_std * noise; context: the encoder's h

Each step is the paper's gated form, z <- g * z + (1 - g) * m, where the shift m and the gate g = sigmoid(s + 1.5)
come from a MADE (Germain et al. 2015, arXiv:1502.03509) of two ELU layers of `width` units that sees z through
autoregressive masks and the context unmasked: m_i and g_i depend on z_j for the j before i in the step's order
only, so the Jacobian is triangular with the gates on its diagonal, log |det dz_out/dz_in| = sum_i log g_i, and
log q(z_T|x) = log N(z0; z_mean, z_std^2) - sum over steps of sum_i log g_i. The order reverses from one step to the
next (as the paper), so every dimension conditions every other one in two steps. The gate's bias starts the steps
near the identity (g about 0.82), which is what keeps deep flows trainable (the paper's forget-gate bias).
"""
import numpy as np

import process

tf, tf1 = process.tf, process.tf1

FORGET_BIAS = 1.5  # added to the gate's pre-activation: sigmoid(1.5) = 0.82, the paper's value
OUTPUT_STDDEV = 1e-3  # m and s start near 0: each step starts as z <- 0.82 z


def made_masks(z_dim, width, reverse):
    """The masks of MADE's three weight matrices (z -> hidden, hidden -> hidden, hidden -> one output per dimension)
    for the order 0..z_dim-1, or its reverse: a unit of degree d sees the inputs of degree <= d, an output of degree
    d the units of degree < d, so output i depends on the inputs before i in the order and on nothing after."""
    degrees = np.arange(1, z_dim + 1)[::-1] if reverse else np.arange(1, z_dim + 1)  # each input's place in the order
    hidden = 1 + np.arange(width) % max(1, z_dim - 1)  # the hidden units' degrees cycle through 1..z_dim-1
    return ((degrees[:, None] <= hidden[None, :]).astype(np.float32),
            (hidden[:, None] <= hidden[None, :]).astype(np.float32),
            (hidden[:, None] < degrees[None, :]).astype(np.float32))


def masked_dense(x, mask, name, stddev=None):
    """x @ (w * mask) + b, w He-initialised (or with stddev): a dense layer whose zeros in the mask stay zero."""
    fan_in = max(1.0, float(mask.sum(0).mean()))
    initializer = tf1.truncated_normal_initializer(stddev=stddev or np.sqrt(2.0 / fan_in))
    with tf1.variable_scope(name):
        w = tf1.get_variable('w', mask.shape, initializer=initializer)
        b = tf1.get_variable('b', [mask.shape[1]], initializer=tf1.zeros_initializer())
        return tf.matmul(x, w * mask) + b


def step(z, context, width, reverse, name):
    """One gated IAF step: (z_out, log_gate), both [batch, z_dim]; log_gate is log dz_out_i / dz_in_i."""
    z_dim = int(z.shape[-1])
    to_hidden, hidden_to_hidden, to_output = made_masks(z_dim, width, reverse)
    with tf1.variable_scope(name):
        h = masked_dense(z, to_hidden, 'made0') + masked_dense(context, np.ones([context.shape[-1], width],
                                                                                  np.float32), 'context')
        h = masked_dense(tf.nn.elu(h), hidden_to_hidden, 'made1')
        h = tf.nn.elu(h)
        shift = masked_dense(h, to_output, 'shift', OUTPUT_STDDEV)
        gate_logit = masked_dense(h, to_output, 'gate', OUTPUT_STDDEV) + FORGET_BIAS
        gate = tf.sigmoid(gate_logit)
        return gate * z + (1.0 - gate) * shift, tf.math.log_sigmoid(gate_logit)


def flow(z0, context, depth, width, scope='iaf'):
    """z0 [batch, z_dim] through `depth` steps (reused by name in `scope`): (z, log_gates), log_gates [batch, z_dim]
    the sum over steps of each dimension's log gate (their sum over dimensions is log |det dz/dz0|)."""
    log_gates = tf.zeros_like(z0)
    z = z0
    with tf1.variable_scope(scope, reuse=tf1.AUTO_REUSE):
        for i in range(depth):
            z, log_gate = step(z, context, width, reverse=i % 2 == 1, name=f'step{i}')
            log_gates += log_gate
    return z, log_gates

