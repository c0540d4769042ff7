"""Autoregressive flows on the latents: inverse autoregressive flow (IAF, Kingma et al. 2016, arXiv:1606.04934) on
the posterior q(z|x), the `iaf_depth` steps after the encoder's Gaussian, and a masked autoregressive flow (MAF,
Papamakarios et al. 2017, arXiv:1705.07057) as the prior p(z), the `prior_flow_depth` steps on N(0, I).

    z, log_gates = autoregressive_flows.posterior_flow(z0, context, depth, width)  # z0 = z_mean + z_std * noise
    log_p = autoregressive_flows.prior_log_density(z, depth, width)    # [batch, z_dim] terms of log p(z)
    z = autoregressive_flows.prior_sample(u, depth, width)             # u ~ N(0, I)

Both are built of MADE networks (Germain et al. 2015, arXiv:1502.03509): two ELU layers of `width` units whose
masks make output i depend on inputs before i in the step's order only, so every step's Jacobian is triangular
and its log-determinant is the sum of its diagonal, one term per dimension (which is what lets the rate, and
free bits, split over latent dimensions). The order reverses from step to step, so every dimension conditions
every other within two steps.

- An IAF step is the paper's gated form, z <- g * z + (1 - g) * m, with m and g = sigmoid(s + 1.5) from a MADE of
  z and the encoder's context h: its diagonal is g, log q(z_T|x) = log N(z0; z_mean, z_std^2) - sum log g. The
  bias starts each step near the identity (g about 0.82), the paper's forget gate. Sampling and scoring are one
  pass each.
- A MAF step maps u to z with z_i = u_i * exp(s_i) + m_i, m and s from a MADE of z (the step's output) before i:
  log p(z) is one pass from z back to u (log N(u) - sum s), and a sample is z_dim passes of each step, one
  dimension settling per pass. s is bounded to +-LOG_SCALE_BOUND; m and s start near 0, the prior near N(0, I).
"""
import weakref

import numpy as np

import process

tf, tf1 = process.tf, process.tf1

FORGET_BIAS = 1.5  # added to the IAF gate's pre-activation: sigmoid(1.5) = 0.82, the paper's value
OUTPUT_STDDEV = 1e-3  # the MADE heads start near 0: an IAF step near z <- 0.82 z, a MAF step near the identity
LOG_SCALE_BOUND = 3.0  # a MAF step scales each dimension by at most e^3 either way


def made_masks(z_dim, width, reverse):
    """The masks of MADE's three weight matrices (z -> hidden, hidden -> hidden, hidden -> one output per dimension)
    for the order 0..z_dim-1, or its reverse: a unit of degree d sees the inputs of degree <= d, an output of degree
    d the units of degree < d, so output i depends on the inputs before i in the order and on nothing after."""
    degrees = np.arange(1, z_dim + 1)[::-1] if reverse else np.arange(1, z_dim + 1)  # each input's place in the order
    hidden = 1 + np.arange(width) % max(1, z_dim - 1)  # the hidden units' degrees cycle through 1..z_dim-1
    return ((degrees[:, None] <= hidden[None, :]).astype(np.float32),
            (hidden[:, None] <= hidden[None, :]).astype(np.float32),
            (hidden[:, None] < degrees[None, :]).astype(np.float32))


# Each graph's masks as constants, made once: every pass of every MADE would otherwise hold a copy (megabytes).
MASK_CONSTANTS = weakref.WeakKeyDictionary()


def mask_constant(mask):
    constants = MASK_CONSTANTS.setdefault(tf1.get_default_graph(), {})
    key = (mask.shape, mask.tobytes())
    if key not in constants:
        with tf.control_dependencies(None), tf1.name_scope(None):  # usable from any context of the graph
            constants[key] = tf.constant(mask, name='made_mask')
    return constants[key]


def masked_weights(shape, mask, name, stddev=None):
    """(w * mask, b) of a dense layer, w He-initialised (or with stddev): the zeros of the mask stay zero (no mask:
    a plain dense layer). Built once and applied as often as needed."""
    fan_in = max(1.0, float(mask.sum(0).mean())) if mask is not None else shape[0]
    initializer = tf1.truncated_normal_initializer(stddev=stddev or np.sqrt(2.0 / fan_in))
    with tf1.variable_scope(name):
        w = tf1.get_variable('w', shape, initializer=initializer)
        b = tf1.get_variable('b', [shape[1]], initializer=tf1.zeros_initializer())
        return (w if mask is None else w * mask_constant(mask)), b


def made(z_dim, context_units, width, reverse, heads):
    """MADE of z (and, unmasked, of a context of context_units, when not 0) as a function (z, context) -> the
    [batch, z_dim] heads named `heads`, each output i a function of the z_j before i in the order. Its weights are
    built here once, so calling it z_dim times (prior_sample) adds matmuls to the graph, not weights."""
    to_hidden, hidden_to_hidden, to_output = made_masks(z_dim, width, reverse)
    first = masked_weights([z_dim, width], to_hidden, 'made0')
    context_layer = masked_weights([context_units, width], None, 'context') if context_units else None
    second = masked_weights([width, width], hidden_to_hidden, 'made1')
    outputs = [masked_weights([width, z_dim], to_output, head, OUTPUT_STDDEV) for head in heads]
    dense = lambda x, layer: tf.matmul(x, layer[0]) + layer[1]

    def apply(z, context=None):
        h = dense(z, first) + (dense(context, context_layer) if context_layer else 0.0)
        h = tf.nn.elu(dense(tf.nn.elu(h), second))
        return [dense(h, output) for output in outputs]
    return apply


def iaf_step(z, context, width, reverse, name):
    """One gated IAF step: (z_out, log_gate), both [batch, z_dim]; log_gate is log dz_out_i / dz_in_i."""
    with tf1.variable_scope(name):
        made_network = made(int(z.shape[-1]), int(context.shape[-1]), width, reverse, ('shift', 'gate'))
        shift, gate_logit = made_network(z, context)
        gate_logit += FORGET_BIAS
        gate = tf.sigmoid(gate_logit)
        return gate * z + (1.0 - gate) * shift, tf.math.log_sigmoid(gate_logit)


def posterior_flow(z0, context, depth, width, scope='iaf'):
    """z0 [batch, z_dim] through `depth` IAF steps (reused by name in `scope`): (z, log_gates), log_gates
    [batch, z_dim] the sum over steps of each dimension's log gate (their sum is log |det dz/dz0|)."""
    log_gates = tf.zeros_like(z0)
    z = z0
    with tf1.variable_scope(scope, reuse=tf1.AUTO_REUSE):
        for i in range(depth):
            z, log_gate = iaf_step(z, context, width, reverse=i % 2 == 1, name=f'step{i}')
            log_gates += log_gate
    return z, log_gates


def maf_step(z_dim, width, reverse, name):
    """A MAF step's (shift, log_scale) as a function of its output z: each dimension's from the z before it."""
    with tf1.variable_scope(name):
        made_network = made(z_dim, 0, width, reverse, ('shift', 'log_scale'))

    def parameters(z):
        shift, raw = made_network(z)
        return shift, LOG_SCALE_BOUND * tf.tanh(raw / LOG_SCALE_BOUND)
    return parameters


def prior_log_density(z, depth, width, scope='prior_flow'):
    """[batch, z_dim] terms of log p(z) under the MAF prior (N(0, I) for depth 0), their sum log p(z): each
    dimension's log N(u_i; 0, 1) and the steps' -s_i, from z back through the steps in one pass each."""
    log_det = tf.zeros_like(z)
    with tf1.variable_scope(scope, reuse=tf1.AUTO_REUSE):
        for i in reversed(range(depth)):
            shift, log_scale = maf_step(int(z.shape[-1]), width, i % 2 == 1, f'step{i}')(z)
            z = (z - shift) * tf.exp(-log_scale)
            log_det -= log_scale
    return log_det - 0.5 * (np.log(2 * np.pi) + tf.square(z))


def prior_sample(u, depth, width, scope='prior_flow'):
    """z of the MAF prior from u ~ N(0, I) [batch, z_dim]: each step solved for its output z_i = u_i exp(s_i) + m_i
    in z_dim passes of its MADE (pass j settles the j-th dimension of the order, the ones before it being final)."""
    z_dim = int(u.shape[-1])
    with tf1.variable_scope(scope, reuse=tf1.AUTO_REUSE):
        for i in range(depth):
            parameters = maf_step(z_dim, width, i % 2 == 1, f'step{i}')
            z = tf.zeros_like(u)
            for _ in range(z_dim):
                shift, log_scale = parameters(z)
                z = u * tf.exp(log_scale) + shift
            u = z
    return u
