"""Restore a trained VAE and write what it learned into its run folder.

    python vae_inference.py                  # the latest checkpoint of the dataset selected in config.py
    python vae_inference.py --checkpoint 5   # the checkpoint model_5

Writes reconstructions.png (rows of test images, each followed by its reconstruction), generations.png
(decoded samples of the N(0, I) prior) and generations.gif (the op-gen training frames in epoch order).
"""
import os
import sys

import numpy as np

import utils
import vae  # imports TensorFlow quietly

tf = vae.tf

tf1 = tf.compat.v1

GRID_COLUMNS = 10    # images per row of both grids
RECONSTRUCTED_ROWS = 5  # pairs of rows (originals, reconstructions) in reconstructions.png


def restore(config, checkpoint=None):
    """A session holding the inference graph with the weights of model_<checkpoint> (default: the latest)."""
    model_directory = utils.run_path(config, 'model_directory')
    checkpoints = utils.list_checkpoints(model_directory)
    if not checkpoints:
        raise utils.UserError(f'no checkpoint model_<epoch> in {model_directory}; train first with python vae.py '
                              '(same --dataset / --run_directory)')
    if checkpoint is None:
        checkpoint = max(checkpoints)
    if checkpoint not in checkpoints:
        raise utils.UserError(f'no checkpoint model_{checkpoint} in {model_directory}; it has epochs '
                              f'{", ".join(map(str, checkpoints))}')
    vae.check_run_config(config)
    graph = tf.Graph()
    with graph.as_default():
        outputs = vae.build_inference_graph(config)
        saver = tf1.train.Saver()
    graph.finalize()
    sess = tf1.Session(graph=graph, config=vae.session_config(config))
    try:
        vae.restore_checkpoint(sess, saver, checkpoints[checkpoint])
    except utils.UserError:
        sess.close()
        raise
    print(f'restored {checkpoints[checkpoint]}')
    return sess, outputs, checkpoint


def reconstruct(sess, outputs, images):
    return sess.run(outputs['reconstruction'], {outputs['images']: images})


def generate(sess, outputs, z):
    return sess.run(outputs['generation'], {outputs['z']: z})


def interleave_rows(originals, reconstructions, columns):
    """Rows of `columns` originals, each followed by the row of their reconstructions."""
    rows = []
    for start in range(0, len(originals), columns):
        rows += [originals[start:start + columns], reconstructions[start:start + columns]]
    return np.concatenate(rows)


def main(argv):
    config, options = utils.parse_command_line(argv, {'checkpoint': -1})
    sess, outputs, epoch = restore(config, None if options['checkpoint'] < 0 else options['checkpoint'])
    run_directory = config['run_directory']
    with sess:
        data = utils.load_dataset(config)
        originals = data['test_images'][:RECONSTRUCTED_ROWS * GRID_COLUMNS]
        pairs = interleave_rows(originals, reconstruct(sess, outputs, originals), GRID_COLUMNS)
        path = os.path.join(run_directory, 'reconstructions.png')
        utils.save_grid(path, pairs, 2 * RECONSTRUCTED_ROWS, GRID_COLUMNS, title=f'epoch {epoch}: test / reconstruction')
        print(f'wrote {path}')

        samples = generate(sess, outputs, vae.fixed_latents(config, GRID_COLUMNS * GRID_COLUMNS))
        path = os.path.join(run_directory, 'generations.png')
        utils.save_grid(path, samples, GRID_COLUMNS, GRID_COLUMNS, title=f'epoch {epoch}: samples of N(0, I)')
        print(f'wrote {path}')

    frames = utils.epoch_frames(utils.run_path(config, 'gen_directory'))
    if frames:
        path = os.path.join(run_directory, 'generations.gif')
        utils.save_gif(path, [frame for _, frame in frames])
        print(f'wrote {path} ({len(frames)} frames, epochs {frames[0][0]} to {frames[-1][0]})')
    else:
        print(f'no op-gen frames in {utils.run_path(config, "gen_directory")}: generations.gif not written')


if __name__ == '__main__':
    utils.exit_on_user_error(lambda: main(sys.argv[1:]))
