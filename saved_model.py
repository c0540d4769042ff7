"""A run's checkpoint as a TensorFlow SavedModel (vae_inference.py --saved_model DIR): the inference graph of
vae.build_inference_graph (batch norm on its moving averages) with named signatures, loadable by plain TensorFlow
without this repository: tf.saved_model.load(DIR).signatures['sample'](count=..., seed=...).
"""
import json
import os

import config_keys
import process
import run_folder
import vae

tf, tf1 = process.tf, process.tf1

# What each signature takes and gives ({signature: (inputs, outputs)}, each {key: meaning}); shapes and ranges
# are those of the run's data: MNIST images are [N, 28, 28, 1] in [0, 1], CelebA's [N, 64, 64, 3] in [-1, 1].
# Another image shape or z width is refused by TensorFlow (TypeError), k < 1 or count < 0 by the signature
# (InvalidArgumentError).
SIGNATURES = {
    'encode': ({'images': 'float32 [N, H, W, C], the data\'s pixel range'},
               {'z_mean': 'float32 [N, z_dim], the posterior mean (iaf_depth > 0: the base mean through the flow, '
                          'the code reconstruct decodes)',
                'z_std': "float32 [N, z_dim], its stddev (iaf_depth > 0: the flow's base's)"}),
    'decode': ({'z': 'float32 [N, z_dim]'},
               {'images': "float32 [N, H, W, C]: the decoder's mean image (bernoulli: pixel probabilities), the "
                          "data's pixel range"}),
    'reconstruct': ({'images': 'float32 [N, H, W, C]'},
                    {'images': 'float32 [N, H, W, C]: decode(encode(images).z_mean)'}),
    'sample': ({'count': 'int32 [], images to draw', 'seed': 'int64 [2], the stateless seed of z'},
               {'z': 'float32 [count, z_dim] ~ p(z): N(0, I), or the MAF prior (prior_flow_depth)',
                'images': 'float32 [count, H, W, C]: decode(z)'}),
    'importance_weighted_bound': (
        {'images': 'float32 [N, H, W, C]', 'k': 'int32 [], samples per image (k * N decodes in one call)',
         'seed': 'int64 [2], the stateless seed of the samples'},
        {'log_px_bound_nats': 'float64 [N]: log p(x) >= log mean_k w (Burda et al. 2015), nats per image',
         'elbo_nats': 'float64 [N]: mean_k log w, the ELBO estimate of the same samples'}),
}


def signature_tensors(config):
    """{signature: (inputs, outputs)} of tensors, built in the default graph: vae.build_inference_graph and, for
    'sample', prior draws through the same decoder variables (the decoder's scope reuses them)."""
    outputs = vae.build_inference_graph(config)
    count = tf1.placeholder(tf.int32, [], name='sample_count')
    seed = tf1.placeholder(tf.int64, [2], name='sample_seed')
    # The signatures bind inputs to the placeholders' shapes (another image shape or z width is a TypeError), but
    # not the scalars' values: count < 0 and k < 1 (a NaN bound) fail with the rule, before anything is computed.
    with tf.control_dependencies([tf.debugging.assert_non_negative(count, message='count must be at least 0')]):
        z = vae.prior_sample(tf.random.stateless_normal(tf.stack([tf.identity(count), config['z_dim']]), seed),
                             config)
    sampled = vae.decoded_image(vae.decoder(z, config, training=False), config)
    # The bound as vae_inference.importance_weighted_bound computes it: log-mean-exp over k in float64.
    log_weights = tf.cast(outputs.log_weights, tf.float64)
    tensors = {
        'encode': ({'images': outputs.images}, {'z_mean': outputs.z_mean, 'z_std': outputs.z_std}),
        'decode': ({'z': outputs.z}, {'images': outputs.generation}),
        'reconstruct': ({'images': outputs.images}, {'images': outputs.reconstruction}),
        'sample': ({'count': count, 'seed': seed}, {'z': z, 'images': sampled}),
        'importance_weighted_bound': (
            {'images': outputs.images, 'k': outputs.k, 'seed': outputs.noise_seed},
            {'log_px_bound_nats': vae.log_mean_exp(log_weights, 0), 'elbo_nats': tf.reduce_mean(log_weights, 0)}),
    }
    k_check = tf.debugging.assert_positive(outputs.k, message='k must be at least 1')

    def checked(name, inputs, outputs):
        # Each output named <signature>_<key> in the graph (saved_model_cli shows these names), the same values.
        with tf.control_dependencies([k_check] if 'k' in inputs else []):
            return {key: tf.identity(tensor, name=f'{name}_{key}') for key, tensor in outputs.items()}
    return {name: (inputs, checked(name, inputs, outputs)) for name, (inputs, outputs) in tensors.items()}


def description(config, epoch):
    """signatures.txt: what the SavedModel holds and what each signature takes and gives, in words."""
    (height, width, channels), (low, high) = config_keys.image_shape(config), config_keys.pixel_range(config)
    lines = [f'model_{epoch} of a {config.get("preset") or config["dataset"]} run (z_dim {config["z_dim"]}, likelihood '
             f'{config["likelihood"]}); H, W, C = {height}, {width}, {channels}; pixels in [{low:g}, {high:g}]; the '
             "run's config.json is beside this file; another image shape or z width is refused (TypeError), and so "
             'are k < 1 and count < 0 (InvalidArgumentError)']
    for name, (inputs, outputs) in SIGNATURES.items():
        lines += [f'{name}:'] + [f'  in  {key}: {meaning}' for key, meaning in inputs.items()] + \
            [f'  out {key}: {meaning}' for key, meaning in outputs.items()]
    return '\n'.join(lines) + '\n'


def write_saved_model(config, epoch, prefix, destination):
    """model_<epoch> (checkpoint prefix) as a SavedModel at destination (tf.compat.v1.saved_model.Builder, tag
    'serve'), with SIGNATURES, and the run's config.json and signatures.txt in assets.extra/. Built in a folder
    beside destination and renamed into place (process.write_folder_atomically): all or nothing; destination must
    be new or empty."""
    record = run_folder.read_run_config(config) or run_folder.run_config_record(config, config.get('steps_per_epoch'))

    def build(temporary):
        verbosity = tf1.logging.get_verbosity()
        tf1.logging.set_verbosity(tf1.logging.ERROR)  # the builder's deprecation notices are not for our users
        # The builder saves and exports the default graph: everything happens inside it.
        try:
            with tf.Graph().as_default(), tf1.Session() as sess:
                tensors = signature_tensors(config)
                saver = tf1.train.Saver()  # the model's variables only
                signatures = {name: tf1.saved_model.predict_signature_def(inputs, outputs)
                              for name, (inputs, outputs) in tensors.items()}
                run_folder.restore_checkpoint(sess, saver, prefix, config)
                builder = tf1.saved_model.Builder(temporary)
                builder.add_meta_graph_and_variables(sess, [tf.saved_model.SERVING], signature_def_map=signatures,
                                                     strip_default_attrs=True)
                builder.save()
        finally:
            tf1.logging.set_verbosity(verbosity)
        extra = os.path.join(temporary, 'assets.extra')  # files for the reader; TensorFlow loads none of them
        process.write_atomically(os.path.join(extra, 'config.json'), lambda f: json.dump(record, f, indent=2), 'w')
        process.write_atomically(os.path.join(extra, 'signatures.txt'), lambda f: f.write(description(config, epoch)),
                                 'w')

    process.write_folder_atomically(destination, build)
    print(f'wrote {destination}: model_{epoch} as a SavedModel with the signatures {", ".join(SIGNATURES)}; load it '
          f"with tf.saved_model.load('{destination}')")
