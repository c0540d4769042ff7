"""Restore a trained VAE and write what it learned into its run folder.

    python vae_inference.py                  # reconstructions, samples and the GIF of the latest checkpoint
    python vae_inference.py --checkpoint 5   # the same for checkpoint model_5
    python vae_inference.py --evaluate       # test-set metrics and the IWAE bound (k=1000) -> evaluations/
    python vae_inference.py --evaluate --k 5000 --num_test 1000   # the standard k, on the first 1000 test images
    python vae_inference.py --interpolate --traverse --scatter --curves   # latent-space pictures
    python vae_inference.py --dataset MNIST_2d --manifold                 # the 2-D manifold of a z_dim 2 model

Writes reconstructions_model_<N>.png (rows of test images, each followed by its reconstruction),
generations_model_<N>.png (decoded samples of the prior) and generations.gif (the op-gen training frames in
epoch order); --evaluate keeps each evaluation as its own record in evaluations/.
"""
import contextlib
import glob
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import sys
import time

if __name__ == '__main__':  # Ctrl-C while TensorFlow loads ends the script quietly: nothing to save yet
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import imageio.v3 as iio
import numpy as np
from tqdm import tqdm

import command_line
import config_keys
import datasets
import fid
import hparams
import process
import run_folder
import saved_model
import flow
import mixture
import two_stage
import vae
from pictures import epoch_frames, image_grid, save_figure, save_gif, save_grid
from process import UserError

tf, tf1 = process.tf, process.tf1

GRID_COLUMNS = 10        # images per row of the grids
RECONSTRUCTED_ROWS = 5   # pairs of rows (originals, reconstructions) in reconstructions.png
IWAE_MEMORY = 2 ** 30    # bytes of decoder activations one session.run of the importance-weighted bound may hold
TRAVERSE_STEPS = 11      # values of one latent dimension in [-3, 3], per row of traversal.png
TRAVERSE_DIMENSIONS = 8  # rows of traversal.png: the latent dimensions with the largest KL
MANIFOLD_SIDE = 20       # manifold.png is MANIFOLD_SIDE x MANIFOLD_SIDE decoded points
PROJECTOR_POINTS = 10000  # at most this many test images in the projector (its sprite stays under 8192 pixels)
MAX_K = 10 ** 7          # importance samples an image: its log weights are held in float64 (80 MB at this k)
SAVE_SECONDS = 60        # the IWAE bound's progress is saved at most this often (and on Ctrl-C)
ACTIVE_UNIT_VARIANCE = 0.01  # Burda et al.: a unit is active when Var_x(E_q[z_j|x]) exceeds this


def restore(config, checkpoint=None):
    """A session holding the inference graph with the weights of model_<checkpoint> (default: the newest, the one
    with the most training steps, as for training), and its prefix."""
    model_directory = run_folder.run_path(config, 'model_directory')
    checkpoints = run_folder.list_checkpoints(model_directory)
    if not checkpoints:
        interrupted = run_folder.list_checkpoints(model_directory, 'interrupted')
        raise UserError(f'no checkpoint model_<epoch> in {model_directory}'
                        + (f' (only interrupted_{max(interrupted)}); run python vae.py --run_directory '
                           f'{shlex.quote(config["run_directory"])} to finish its epoch, with --num_epoch one more '
                           'than the run has trained if it says the run has trained them all' if interrupted else
                           '; train first with python vae.py (same --dataset / --run_directory)'))
    run_folder.check_epoch_length(config)  # a model_<N> of another run is refused by name
    if checkpoint is None:
        checkpoint = max(checkpoints)
    if checkpoint not in checkpoints:
        raise UserError(f'no checkpoint model_{checkpoint} in {model_directory}; it has epochs '
                        f'{", ".join(map(str, checkpoints))}')
    problem = run_folder.checkpoint_problem(checkpoints[checkpoint])
    if problem:
        earlier = [str(epoch) for epoch in checkpoints if epoch != checkpoint]
        raise UserError(f'{checkpoints[checkpoint]} cannot be read ({problem}); '
                        + (f'pass --checkpoint {earlier[-1]} for the newest earlier one' if earlier else
                           'train again with python vae.py'))
    sess, outputs, _ = vae.restored_model(config, checkpoints[checkpoint])
    print(f'restored {checkpoints[checkpoint]}')
    return sess, outputs, checkpoint


def reconstruct(sess, outputs, images):
    return sess.run(outputs.reconstruction, {outputs.images: images})


def generate(sess, outputs, z):
    return sess.run(outputs.generation, {outputs.z: z})


def interleave_rows(originals, reconstructions, columns):
    """Rows of `columns` originals, each followed by the row of their reconstructions."""
    rows = []
    for start in range(0, len(originals), columns):
        rows += [originals[start:start + columns], reconstructions[start:start + columns]]
    return np.concatenate(rows)


# ---------------------------------------------------------------- numbers

def numpy_log_mean_exp(values, axis=0):
    """log(mean(exp(values))) along axis, without overflow or underflow (vae.log_mean_exp, in float64 numpy)."""
    peak = np.max(values, axis=axis, keepdims=True)
    return np.squeeze(peak, axis) + np.log(np.mean(np.exp(values - peak), axis=axis))


def importance_weighted_bound(sess, outputs, config, images, k, progress_path=None, weights=''):
    """Per-image (ELBO estimate, IWAE bound) in nats from k importance samples each, in session.runs whose
    memory stays within IWAE_MEMORY whatever the image size. The encoder runs once per image and chunk of
    samples; each run's noise is seeded by its place (first image, first sample), so the numbers do not depend
    on how the work was split or interrupted.

    With progress_path, the per-image results so far are saved there (atomically, every SAVE_SECONDS and on
    Ctrl-C / SIGTERM, which then exit with 128 + signal) and a later call with the same checkpoint, k and images
    goes on from them: the file names the weights (their digest, `weights`), the images, k, the split and the
    seeding, and progress of anything else is never used. A damaged file is a warning and a fresh start. The
    progress bar shows the rate and the time left (in a log, a line a minute)."""
    decodes = config_keys.decodes_per_run(config, IWAE_MEMORY)
    images_per_run = max(1, min(len(images), decodes // k))
    samples_per_run = min(k, decodes)
    identity = (f'weights={weights} k={k} runs={images_per_run}x{samples_per_run} noise=stateless(first image, '
                f'first sample) images={hashlib.sha1(images.tobytes()).hexdigest()}')
    scores = {'elbo': np.zeros(len(images)), 'iwae': np.zeros(len(images))}
    done = saved_progress(progress_path, identity, scores, 'images')
    elbo, iwae = scores['elbo'], scores['iwae']
    with progress_keeper(progress_path, identity, len(images), 'images') as keep, \
            tqdm(total=len(images) * k, initial=done * k, unit='sample', desc=f'IWAE k={k}', file=sys.stdout,
                 mininterval=0.5 if sys.stdout.isatty() else 60, unit_scale=True, dynamic_ncols=True) as bar:
        while done < len(images):
            batch = images[done:done + images_per_run]
            log_weights = []
            for first in range(0, k, samples_per_run):
                if first:  # between one image's runs too (a large k): the image in progress is scored again
                    keep(done, scores)
                chunk = min(samples_per_run, k - first)
                log_weights.append(sess.run(outputs.log_weights, {outputs.images: batch, outputs.k: chunk,
                                                                  outputs.noise_seed: [done, first]}))
                bar.update(chunk * len(batch))
            log_weights = np.concatenate(log_weights).astype(np.float64)
            elbo[done:done + len(batch)] = log_weights.mean(axis=0)
            iwae[done:done + len(batch)] = numpy_log_mean_exp(log_weights, axis=0)
            done += len(batch)
            keep(done, scores)
    return elbo, iwae


def saved_progress(path, identity, arrays, what):
    """How many items of an interrupted evaluation `path` holds for this identity, copied into `arrays` ({name:
    array over all items}); 0 when there is no file, or it is another evaluation's, damaged or holds a non-finite
    number (a warning each: a fresh start)."""
    if not path or not os.path.lexists(path):
        return 0
    count = len(next(iter(arrays.values())))
    try:
        with np.load(path) as saved:
            done = int(saved['done'])
            if str(saved['identity']) == identity and 0 <= done <= count and \
                    all(saved[name].shape == array.shape for name, array in arrays.items()):
                if not all(np.all(np.isfinite(saved[name][:done])) for name in arrays):
                    print(f'warning: {path} holds numbers that are not finite; starting afresh')
                    return 0
                for name, array in arrays.items():
                    array[:done] = saved[name][:done]
                print(f'going on from {path}: {done} of {count} {what} done')
                return done
        print(f'warning: {path} is the progress of another evaluation; starting afresh')
    except Exception as error:  # whatever a damaged file raises in numpy's reader (zip, pickle, format)
        print(f'warning: {path} is damaged ({type(error).__name__}); starting afresh')
    return 0


@contextlib.contextmanager
def progress_keeper(path, identity, count, what):
    """keep(done, arrays): the progress of a long evaluation saved in path (atomically, with its identity) at most
    every SAVE_SECONDS, and on SIGINT / SIGTERM, which then exit with 128 + signal and a line saying how to go
    on. path None: nothing is saved and the signals are left alone."""
    last_save = time.monotonic()
    with process.stop_requests(enabled=path is not None) as stop_signal:
        def keep(done, arrays):
            nonlocal last_save
            if path and (stop_signal or time.monotonic() - last_save > SAVE_SECONDS):
                process.write_atomically(path, lambda f: np.savez(f, identity=identity, done=done, **arrays))
                last_save = time.monotonic()
            if stop_signal:
                print(f'\n{signal.Signals(stop_signal[0]).name}: {done} of {count} {what} scored, saved in {path}; '
                      'run the same command to go on from there')
                raise SystemExit(128 + stop_signal[0])
        yield keep


def active_units(z_means, threshold=ACTIVE_UNIT_VARIANCE):
    """Latent dimensions whose posterior mean varies over the data by more than threshold (Burda et al.)."""
    return int(np.sum(np.var(z_means, axis=0) > threshold))


def bits_per_dim(nats, config):
    """Negative log-likelihood in nats per image as bits per dimension of the 8-bit data. Binary data (bernoulli)
    needs nothing more. The Gaussian likelihoods are densities over the scaled pixels: the probability of a
    pixel's 8-bit bin is its density times the bin's width (256 bins over the pixel range, far narrower than the
    decoder's noise), so the discrete negative log-likelihood adds D * log(256 / range) nats: 8 bits/dim for
    pixels in [0, 1], 7 for [-1, 1]. A density alone can go below zero and compares with nothing."""
    dimensions = int(np.prod(config_keys.image_shape(config)))
    if config['likelihood'] != 'bernoulli':
        low, high = config_keys.pixel_range(config)
        nats = nats + dimensions * np.log(256 / (high - low))
    return nats / (dimensions * np.log(2))


def decoder_description(config):
    if config['likelihood'] == 'gaussian':
        return f'gaussian, fixed variance sigma^2 = kl_weight * D / 2 = {vae.fixed_decoder_variance(config):.4g}'
    if config['likelihood'] == 'gaussian_learned':
        return f'gaussian, learned {config["decoder_variance"]} variance'
    return 'bernoulli' + (' (fixed seeded binarisation of the test set)' if config['binarize'] else '')


def posterior_description(config):
    if config['iaf_depth']:
        return f'IAF, {config["iaf_depth"]} steps of {config["iaf_width"]} units'
    return 'factorised gaussian'


def prior_description(config):
    if config['prior_flow_depth']:
        return f'MAF, {config["prior_flow_depth"]} steps of {config["prior_flow_width"]} units'
    return 'N(0, I)'


def evaluate(sess, outputs, config, images, k, progress_path=None, weights=''):
    """Test-set metrics; the ELBO and IWAE figures are in nats per image (and bits per dimension). progress_path:
    where the IWAE bound's progress is kept, for the weights of that digest (importance_weighted_bound)."""
    z_means, rates, reconstructions = vae.run_in_batches(
        sess, [outputs.z_mean, outputs.kl_per_dimension, outputs.reconstruction], outputs.images, images)
    mse = np.mean(np.square(images - reconstructions), axis=(1, 2, 3))
    kl = rates.sum(axis=1)
    elbo, iwae = importance_weighted_bound(sess, outputs, config, images, k, progress_path, weights)
    low, high = config_keys.pixel_range(config)
    peak = high - low  # PSNR's peak signal: 1 for MNIST in [0, 1], 2 for CelebA in [-1, 1]
    standard_error = lambda values: float(np.std(values) / np.sqrt(len(values)))
    return {
        'test_images': len(images),
        'decoder': decoder_description(config),
        'posterior': posterior_description(config),
        'prior': prior_description(config),
        'reconstruction_mse': float(mse.mean()),
        'psnr_db': float(np.mean(10 * np.log10(peak ** 2 / np.maximum(mse, 1e-12)))),
        'kl_nats': float(kl.mean()),
        'negative_elbo_nats': float(-elbo.mean()),
        'negative_elbo_bits_per_dim': float(bits_per_dim(-elbo.mean(), config)),
        'iwae_k': k,
        'negative_iwae_nats': float(-iwae.mean()),
        'negative_iwae_nats_standard_error': standard_error(iwae),
        'negative_iwae_bits_per_dim': float(bits_per_dim(-iwae.mean(), config)),
        'active_units': active_units(z_means),
        'z_dim': config['z_dim'],
    }


# The numbers of an evaluation record (evaluate's, beside its identity: images, decoder, k, z_dim).
METRICS = ('reconstruction_mse', 'psnr_db', 'kl_nats', 'negative_elbo_nats', 'negative_elbo_bits_per_dim',
           'negative_iwae_nats', 'negative_iwae_nats_standard_error', 'negative_iwae_bits_per_dim', 'active_units')


def print_metrics(metrics):
    rows = [
        ('test images', f'{metrics["test_images"]}'),
        ('decoder', metrics['decoder']),
        ('posterior q(z|x)', metrics.get('posterior', 'factorised gaussian')),  # (a record older than the flows)
        ('prior p(z)', metrics.get('prior', 'N(0, I)')),
        ('reconstruction MSE (posterior mean)', f'{metrics["reconstruction_mse"]:.5f}'),
        ('PSNR (peak = pixel range, mean over images)', f'{metrics["psnr_db"]:.2f} dB'),
        ('KL(q(z|x) || p(z))', f'{metrics["kl_nats"]:.2f} nats'),
        (f'negative ELBO (k={metrics["iwae_k"]} samples)',
         f'{metrics["negative_elbo_nats"]:.2f} nats = {metrics["negative_elbo_bits_per_dim"]:.4f} bits/dim'),
        (f'negative IWAE bound, k={metrics["iwae_k"]}',
         f'{metrics["negative_iwae_nats"]:.2f} +- {metrics["negative_iwae_nats_standard_error"]:.2f} nats = '
         f'{metrics["negative_iwae_bits_per_dim"]:.4f} bits/dim'),
        ('active units', f'{metrics["active_units"]} of {metrics["z_dim"]}'),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f'  {name:<{width}}  {value}')


# ---------------------------------------------------------------- pictures

def interpolation_grid(sess, outputs, images, rows, steps=GRID_COLUMNS):
    """rows x (steps + 2): each row a test image, decodes along the line between its posterior mean and the
    next image's, and that image."""
    z_means = sess.run(outputs.z_mean, {outputs.images: images[:2 * rows]})
    pictures = []
    for row in range(rows):
        start, end = z_means[2 * row], z_means[2 * row + 1]
        line = np.stack([(1 - t) * start + t * end for t in np.linspace(0, 1, steps)]).astype(np.float32)
        pictures += [images[2 * row:2 * row + 1], generate(sess, outputs, line), images[2 * row + 1:2 * row + 2]]
    return np.concatenate(pictures)


def dimension_rates(sess, outputs, images):
    """The rate of each latent dimension in nats, averaged over images: its KL(q(z_j|x) || N(0, 1)), or with a flow
    its share of one sample's log q(z|x) - log p(z) (vae.image_dimension_rates)."""
    return sess.run(outputs.kl_per_dimension, {outputs.images: images}).mean(axis=0)


def traversal_grid(sess, outputs, images, dimensions):
    """One row per latent dimension: the first test image's z_mean with that dimension swept over [-3, 3]."""
    base = sess.run(outputs.z_mean, {outputs.images: images[:1]})[0]
    rows = []
    for dimension in dimensions:
        z = np.repeat(base[None], TRAVERSE_STEPS, axis=0)
        z[:, dimension] = np.linspace(-3, 3, TRAVERSE_STEPS)
        rows.append(generate(sess, outputs, z.astype(np.float32)))
    return np.concatenate(rows)


def manifold_grid(sess, outputs, side=MANIFOLD_SIDE):
    """The paper's Figure 4: decodes of a side x side grid of 2-D latents placed through the inverse Gaussian
    CDF, so that equal areas of the grid carry equal prior mass."""
    quantiles = [statistics.NormalDist().inv_cdf(p) for p in np.linspace(0.5 / side, 1 - 0.5 / side, side)]
    z = np.array([[x, y] for y in quantiles[::-1] for x in quantiles], np.float32)
    return generate(sess, outputs, vae.prior_latents(sess, outputs, z))  # (through a flow prior, its quantiles)


def principal_components(points, count=2):
    """The points on their first `count` principal axes; axes the points do not span (one point, a 1-D latent)
    are zero."""
    centred = points - points.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:count].T
    return np.pad(projected, [(0, 0), (0, count - projected.shape[1])])


def save_scatter(path, z_means, labels, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    points = z_means if z_means.shape[1] == 2 else principal_components(z_means)
    figure, axes = plt.subplots(figsize=(6, 5.5))
    if labels is None:  # CelebA has no class labels
        axes.scatter(points[:, 0], points[:, 1], s=3)
    else:
        scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap='tab10', s=3, vmin=-0.5, vmax=9.5)
        figure.colorbar(scatter, ticks=range(10), label='digit')
    axes.set_title(title)
    axes.set_xlabel('z1' if z_means.shape[1] == 2 else 'principal component 1')
    axes.set_ylabel('z2' if z_means.shape[1] == 2 else 'principal component 2')
    figure.tight_layout()
    try:
        save_figure(path, figure)
    finally:
        plt.close(figure)


# Scalars of logs written before their names changed: {old tag: tag}.
RENAMED_TAGS = {'reconstruction_loss': 'mean_squared_error', 'kl': 'rate', 'kl_weight': 'kl_coefficient'}


def read_training_curves(log_directory):
    """{tag: (steps, values)} of the scalar summaries in a run's TensorBoard logs (older tags under their new names,
    RENAMED_TAGS); a step logged twice (a run resumed after a crash) keeps its latest value."""
    curves = {}
    verbosity = tf1.logging.get_verbosity()
    tf1.logging.set_verbosity(tf1.logging.ERROR)  # summary_iterator's deprecation notice is not for our users
    try:
        for path in sorted(glob.glob(os.path.join(glob.escape(str(log_directory)), 'events.out.tfevents.*'))):
            try:
                for event in tf1.train.summary_iterator(path):
                    for value in event.summary.value:
                        if value.HasField('simple_value'):
                            tag = RENAMED_TAGS.get(value.tag, value.tag)
                            curves.setdefault(tag, {})[event.step] = value.simple_value
            except tf.errors.OpError as error:  # a file cut short by a kill: what was read before stays
                print(f'warning: {path} ends in a damaged record ({error.message.strip().splitlines()[0]}); '
                      'using the events before it')
    finally:
        tf1.logging.set_verbosity(verbosity)
    return {tag: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)]))
            for tag, points in curves.items()}


def epoch_curves(config):
    """{tag: (epochs, values)} of the run's scalar summaries (no checkpoint needed): each global step as a
    fractional epoch, at the run's steps_per_epoch (config.json's; for a folder from before it recorded that,
    the newest model_<N>'s step, which ends epoch N)."""
    curves = read_training_curves(run_folder.run_path(config, 'log_directory'))
    if 'loss' not in curves:
        raise UserError(f'no training summaries in {run_folder.run_path(config, "log_directory")}; '
                        'train first with python vae.py')
    steps_per_epoch = config.get('steps_per_epoch')
    if steps_per_epoch is None:
        checkpoints = run_folder.list_checkpoints(run_folder.run_path(config, 'model_directory'))
        step = run_folder.checkpoint_step(checkpoints[max(checkpoints)]) if checkpoints else None
        if step is None:
            raise UserError(f'{config["run_directory"]}/config.json does not record steps_per_epoch and no '
                            'model_<N> checkpoint gives it; the curves need one of them')
        steps_per_epoch = step // (max(checkpoints) + 1)
    return {tag: (steps / steps_per_epoch, values) for tag, (steps, values) in curves.items()}


def save_training_curves(path, curves):
    """The loss, the distortion (older logs: the MSE), the rate and the test negative ELBO over epochs."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    distortion = 'distortion' if 'distortion' in curves else 'mean_squared_error'
    tags = [tag for tag in ('loss', distortion, 'rate', 'test_negative_elbo_nats') if tag in curves]
    figure, axes = plt.subplots(1, len(tags), figsize=(4 * len(tags), 3.5), squeeze=False)
    for axis, tag in zip(axes[0], tags):
        epochs, values = curves[tag]
        axis.plot(epochs, values, linewidth=1)
        axis.set_title(tag.replace('_', ' '))
        axis.set_xlabel('epoch')
        if tag != 'rate' and np.all(values > 0):
            axis.set_yscale('log')
    figure.tight_layout()
    try:
        save_figure(path, figure)
    finally:
        plt.close(figure)


# ---------------------------------------------------------------- records and pictures

EVALUATIONS = 'evaluations'  # the run folder's evaluation records, one JSON file each


def picture_path(config, name, epoch, settings=()):
    """<run>/<name>_model_<epoch>[-<setting>...].png: a picture is named by the checkpoint it shows and by what
    else made it other than that checkpoint's default picture (picture_settings), so one never replaces another."""
    return os.path.join(config['run_directory'], '-'.join([f'{name}_model_{epoch}', *settings]) + '.png')


def picture_settings(config, options, shows):
    """The parts of a picture's name beyond its checkpoint. Pictures of test images (shows 'test'): n<N> when
    --num_test shows a subset. Samples (shows a sampler's name): seed<S> for another --seed than the run's, and for
    a fitted sampler train<N> for another --num_train_images than the run's and 'samples' for --fit_to samples, and
    its own flag's value when not the default (two_stage's and flow's e<epochs>, gmm's c<components>), and r<steps>
    for --refine_steps."""
    if shows == 'test':
        return [f'n{options["num_test"]}'] if options['num_test'] else []
    saved = run_folder.read_run_config(config) or {}
    settings = [f'seed{config["seed"]}'] if config['seed'] != saved.get('seed', config['seed']) else []
    if shows != 'prior' and config['num_train_images'] != saved.get('num_train_images', config['num_train_images']):
        settings.append(f'train{config["num_train_images"]}')
    if shows != 'prior' and options['fit_to'] != FLAGS['fit_to'][0]:
        settings.append(options['fit_to'])
    for sampler, flag, mark in (('two_stage', 'two_stage_epochs', 'e'), ('flow', 'flow_epochs', 'e'),
                                ('gmm', 'gmm_components', 'c')):
        if shows == sampler and options[flag] != FLAGS[flag][0]:
            settings.append(f'{mark}{options[flag]}')
    return settings + refinement(options)


# The pictures an option draws: {option: (its name, what it shows: 'test' images, or None)}; with no option, the
# reconstructions of test images and the generations of --sampler (planned_pictures).
PICTURES = {'interpolate': ('interpolation', 'test'), 'traverse': ('traversal', 'test'),
            'manifold': ('manifold', None), 'scatter': ('latent_scatter', 'test')}


def planned_pictures(config, options, epoch, samples):
    """{what: path} of every picture this command draws (samples: the default reconstructions and generations),
    so each path is checked before any work and written where it was checked."""
    shown = lambda name, shows: picture_path(config, name, epoch, picture_settings(config, options, shows)
                                             if shows else ())
    planned = {option: shown(*PICTURES[option]) for option in PICTURES if options[option]}
    if samples:
        sampler = options['sampler']
        planned['reconstructions'] = shown('reconstructions', 'test')
        planned['generations'] = shown('generations' if sampler == 'prior' else f'generations_{sampler}', sampler)
        planned['gif'] = os.path.join(config['run_directory'], 'generations.gif')
    for path in planned.values():
        check_destination(path, 'a picture')
    return planned


def write_grid(config, path, images, rows, columns, title):
    save_grid(path, images, rows, columns, title=title, value_range=config_keys.pixel_range(config))
    print(f'wrote {path}')


def evaluation_path(config, epoch, weights, images, kind, *settings):
    """<run>/evaluations/model_<N>-<kind>-<settings>-<count>images_<digest>-weights_<digest>.json: an evaluation
    is keyed by the checkpoint, the digest of its weights, what was computed and the image set, so no evaluation
    replaces another, and the same one is found again."""
    parts = [f'model_{epoch}', kind, *settings,
             f'{len(images)}images_{hashlib.sha1(images.tobytes()).hexdigest()[:10]}', f'weights_{weights[:10]}']
    return os.path.join(config['run_directory'], EVALUATIONS, '-'.join(parts) + '.json')


def evaluation_records(run_directory):
    """{path: record} of every evaluation kept in a run folder (the unreadable ones skipped with a warning)."""
    records = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(str(run_directory)), EVALUATIONS, '*.json'))):
        try:
            records[path] = json.loads(process.read_text(path, 'evaluation record'))
        except (UserError, ValueError) as error:
            print(f'warning: skipping {path} ({error})')
    return records


def write_record(path, record):
    """An evaluation record, only when every number is finite (JSON has no NaN; a NaN metric is a broken model)."""
    try:
        text = json.dumps(record, indent=2, allow_nan=False)
    except ValueError:
        broken = [key for key, value in record.items() if isinstance(value, float) and not np.isfinite(value)]
        raise UserError(f'the metrics {", ".join(broken)} are not finite: this checkpoint does not score; '
                        f'nothing was written') from None
    process.write_atomically(path, lambda f: f.write(text), 'w')
    print(f'wrote {path}')


def check_destination(path, what):
    """A one-line error, before anything is computed, when path cannot be written: a folder stands there, or a
    file (or broken link) where one of its folders goes."""
    folder = process.nearest_existing(os.path.dirname(os.path.abspath(path)))
    if os.path.isdir(path) and not os.path.islink(path):
        raise UserError(f'{path} is a folder where {what} goes; move it away')
    if not os.path.isdir(folder):
        raise UserError(f'{folder} is in the way of {what} ({path}); move it away')


def kept_record(path, identity, numbers):
    """The record at path when it is whole and is the one asked for: a JSON object whose `identity` keys hold
    these values (what its name stands for, and what its numbers depend on beyond it, such as the decoder) and
    whose `numbers` are finite numbers. None when there is none; a damaged, foreign or contradicting one is a
    warning: it is computed again and replaced. A path that cannot hold it is a one-line error before any work."""
    check_destination(path, 'the record')
    if not os.path.lexists(path):
        return None
    try:
        record = json.loads(process.read_text(path, 'evaluation record'))
    except (UserError, ValueError):
        record = None
    if not isinstance(record, dict):
        print(f'warning: {path} is damaged; computing it again')
        return None
    wrong = [key for key, value in identity.items() if record.get(key) != value] + \
        [key for key in numbers if isinstance(record.get(key), bool) or not isinstance(record.get(key), (int, float))
         or not math.isfinite(record[key])]
    if wrong:
        print(f'warning: {path} is damaged or not this evaluation ({", ".join(wrong)}); computing it again')
        return None
    return record


def write_evaluation(sess, outputs, config, epoch, prefix, test_images, k):
    """The IWAE evaluation of model_<epoch> as its own record; an evaluation already kept is printed, not redone."""
    weights = run_folder.checkpoint_digest(prefix)
    path = evaluation_path(config, epoch, weights, test_images, 'iwae', f'k{k}')
    identity = {'checkpoint': f'model_{epoch}', 'weights_sha1': weights, 'test_images': len(test_images),
                'test_images_sha1': hashlib.sha1(test_images.tobytes()).hexdigest(), 'iwae_k': k,
                'decoder': decoder_description(config), 'z_dim': config['z_dim']}
    kept = kept_record(path, identity, METRICS)
    if kept:
        print_metrics(kept)
        print(f'{path} holds this evaluation (the same weights, images and k); delete it to compute it again')
        return
    progress = path[:-len('.json')] + '.progress.npz'
    metrics = evaluate(sess, outputs, config, test_images, k, progress, weights)
    print_metrics(metrics)
    write_record(path, {'checkpoint': f'model_{epoch}', 'weights_sha1': weights,
                        'test_images_sha1': hashlib.sha1(test_images.tobytes()).hexdigest(),
                        'test_seed': config['test_seed'], **metrics})
    hparams.write_metrics(config, epoch, prefix, {'negative_iwae_nats': metrics['negative_iwae_nats']})
    discard_progress(progress)


def discard_progress(progress):
    """Removes a finished evaluation's progress file, once its result is written."""
    try:
        os.remove(progress)
    except FileNotFoundError:
        pass
    except OSError as error:
        print(f'warning: could not remove {progress} ({error.strerror}); it is not used again, delete it')


def write_curves(config):
    """training_curves.png from the run's TensorBoard logs (no checkpoint needed), on an axis of epochs."""
    path = os.path.join(config['run_directory'], 'training_curves.png')
    save_training_curves(path, epoch_curves(config))
    print(f'wrote {path}')


def write_samples(sess, outputs, config, data, test_images, epoch, prefix, options, planned):
    """reconstructions_model_<N>.png and generations_model_<N>.png (generations_<sampler>_model_<N>.png for
    another --sampler than the prior), at their planned_pictures paths: what a run looks like at this checkpoint."""
    sampler = options['sampler']
    samples = generate(sess, outputs, sampler_latents(sess, outputs, config, data, epoch, prefix, options,
                                                      GRID_COLUMNS ** 2)[0])
    originals = test_images[:RECONSTRUCTED_ROWS * GRID_COLUMNS]
    pairs = interleave_rows(originals, reconstruct(sess, outputs, originals), GRID_COLUMNS)
    write_grid(config, planned['reconstructions'], pairs, 2 * RECONSTRUCTED_ROWS, GRID_COLUMNS,
               f'epoch {epoch}: test / reconstruction')
    write_grid(config, planned['generations'], samples, GRID_COLUMNS, GRID_COLUMNS,
               f'epoch {epoch}: samples of {sampler_title(config, sampler)}'
               + ('' if sampler == 'prior' else f' of the {LATENTS_ARE[options["fit_to"]]}')
               + (f', refined by {options["refine_steps"]} of the chain\'s steps' if options['refine_steps'] else ''))


def write_gif(config, path):
    """generations.gif (at path) from the op-gen frames training wrote."""
    frames = epoch_frames(run_folder.run_path(config, 'gen_directory'))
    if frames:
        save_gif(path, [frame for _, frame in frames])
        print(f'wrote {path} ({len(frames)} frame{"s" if len(frames) > 1 else ""}, epochs {frames[0][0]} to '
              f'{frames[-1][0]})')
    else:
        print(f'no op-gen frames in {run_folder.run_path(config, "gen_directory")}: generations.gif not written')


def write_projector(config, epoch, z_means, images, labels, settings=()):
    """TensorBoard's projector in the run's log folder: model_<N>'s test posterior means
    (projector_means_model_<N>.tsv), their labels (MNIST, projector_labels_model_<N>.tsv) and a sprite of the images
    (projector_sprite_model_<N>.png), one embedding per checkpoint and settings (named like pictures, n<N> for
    --num_test) in projector_config.pbtxt; `tensorboard --logdir <run>/logs` shows them under Projector."""
    from google.protobuf import text_format
    from tensorboard.plugins import projector
    count = min(len(z_means), PROJECTOR_POINTS)
    height, width = images.shape[1:3]
    side = int(np.ceil(np.sqrt(count)))
    folder = run_folder.run_path(config, 'log_directory')
    path = os.path.join(folder, 'projector_config.pbtxt')
    projector_config = projector.ProjectorConfig()
    if os.path.exists(path):  # the other checkpoints' embeddings stay
        try:
            text_format.Parse(process.read_text(path, 'projector config'), projector_config)
        except (UserError, text_format.ParseError) as error:
            print(f'warning: {path} is damaged ({error}); writing it anew')
            projector_config = projector.ProjectorConfig()
    suffix = '-'.join([f'model_{epoch}', *settings])
    kept = [e for e in projector_config.embeddings if e.tensor_path != f'projector_means_{suffix}.tsv']
    del projector_config.embeddings[:]
    projector_config.embeddings.extend(kept)
    embedding = projector_config.embeddings.add()
    embedding.tensor_name = f'{suffix}: test posterior means ({count} images, z_dim {z_means.shape[1]})'
    embedding.tensor_path = f'projector_means_{suffix}.tsv'
    process.write_atomically(os.path.join(folder, embedding.tensor_path),
                             lambda f: np.savetxt(f, z_means[:count], fmt='%.6g', delimiter='\t'))
    if labels is not None:  # one column: no header line
        embedding.metadata_path = f'projector_labels_{suffix}.tsv'
        process.write_atomically(os.path.join(folder, embedding.metadata_path),
                                 lambda f: f.write(''.join(f'{label}\n' for label in labels[:count])), 'w')
    embedding.sprite.image_path = f'projector_sprite_{suffix}.png'
    embedding.sprite.single_image_dim.extend([width, height])
    sprite = image_grid(images[:count], side, side, config_keys.pixel_range(config))
    process.write_atomically(os.path.join(folder, embedding.sprite.image_path),
                             lambda f: iio.imwrite(f, sprite[..., 0] if sprite.shape[-1] == 1 else sprite,
                                                   extension='.png'))
    text = text_format.MessageToString(projector_config)
    process.write_atomically(path, lambda f: f.write(text), 'w')
    print(f'wrote {path} ({count} points{" with labels" if labels is not None else ""}); '
          f'tensorboard --logdir {shlex.quote(folder)} shows them under Projector')


def export_run(config, epoch, folder):
    """A new run folder at `folder` holding model_<epoch>'s weights alone (no Adam slots, no step: a few MB), the
    run's config.json, its op-gen frames (generations.gif) and its TensorBoard logs (--curves): what
    vae_inference.py needs to restore, evaluate and picture it anywhere. Built beside `folder` and renamed into
    place: all or nothing; `folder` must be new or empty."""
    source = run_folder.list_checkpoints(run_folder.run_path(config, 'model_directory'))[epoch]
    run, target = os.path.realpath(config['run_directory']), os.path.realpath(folder)
    if os.path.commonpath([run, target]) == run:
        raise UserError(f'--export {folder} is inside the run folder {config["run_directory"]}; choose a folder '
                        'outside it')
    # The run's own config.json, training settings and record included, so the copy says how it was trained.
    record = {**(run_folder.read_run_config(config)
                 or run_folder.run_config_record(config, config.get('steps_per_epoch'))),
              'run_directory': folder}

    def build(temporary):
        inside = {**config, 'run_directory': temporary}
        run_folder.make_run_folders(inside)
        sess, _, saver = vae.restored_model(config, source)  # the model's variables only
        with sess:
            saver.save(sess, os.path.join(run_folder.run_path(inside, 'model_directory'), f'model_{epoch}'),
                       write_meta_graph=False, write_state=False)
        process.write_atomically(os.path.join(temporary, 'config.json'), lambda f: json.dump(record, f, indent=2),
                                 'w')
        frames = run_folder.run_path(inside, 'gen_directory')
        os.makedirs(frames, exist_ok=True)
        for _, path in epoch_frames(run_folder.run_path(config, 'gen_directory')):
            shutil.copy(path, frames)
        for path in glob.glob(os.path.join(glob.escape(run_folder.run_path(config, 'log_directory')),
                                           'events.out.tfevents.*')):
            shutil.copy(path, run_folder.run_path(inside, 'log_directory'))

    process.write_folder_atomically(folder, build)
    print(f'wrote {folder}: model_{epoch} (weights only), config.json, {config["gen_directory"]}/ and the '
          f'TensorBoard logs; restore it with python vae_inference.py --run_directory {shlex.quote(folder)}')


# ---------------------------------------------------------------- sample quality: the FID

MAX_TWO_STAGE_EPOCHS = 10 ** 4  # the second stage's fit: Dai & Wipf train hundreds of epochs
MAX_FID_SAMPLES = 10 ** 5  # generated images one FID may score: 16 KB of float64 features each, 1.6 GB at the bound
FID_CHUNK = 500  # images scored between two looks at the clock (progress saved at most every SAVE_SECONDS)
MAX_FLOW_EPOCHS = 10 ** 4  # the flow keeps its best held-out epoch: more only costs time
MAX_REFINE_STEPS = 100  # each step encodes and decodes every latent once
SAMPLER_TITLES = {'prior': 'N(0, I)', 'gmm': 'a Gaussian mixture', 'flow': 'a RealNVP flow',
                  'two_stage': 'a second-stage VAE'}  # of the LATENTS_ARE of --fit_to
def sampler_title(config, sampler):
    return 'the MAF prior' if sampler == 'prior' and config['prior_flow_depth'] else SAMPLER_TITLES[sampler]


FITTED_SAMPLERS = {'gmm': mixture, 'flow': flow, 'two_stage': two_stage}  # module: its fit, sample and what it keeps


def inception_pixels(images, config):
    """Model-range images as Inception's [0, 255] pixels (a Bernoulli decoder's pixel probabilities are grey)."""
    low, high = config_keys.pixel_range(config)
    return np.clip((np.asarray(images, np.float32) - low) * (255 / (high - low)), 0, 255)


def resumable_features(extract, make_images, count, config, progress_path, identity, what):
    """pool_3 features of make_images(start, stop) (model-range images) for start..count in chunks, with a
    progress bar and the time left; the progress is kept in progress_path as importance_weighted_bound keeps
    its own (saved_progress, progress_keeper)."""
    progress = {'features': np.zeros((count, fid.FEATURES), np.float32)}
    done = saved_progress(progress_path, identity, progress, what)
    with progress_keeper(progress_path, identity, count, what) as keep, \
            tqdm(total=count, initial=done, unit='image', desc=f'Inception, {what}', file=sys.stdout,
                 mininterval=0.5 if sys.stdout.isatty() else 60, dynamic_ncols=True) as bar:
        while done < count:
            stop = min(count, done + FID_CHUNK)
            progress['features'][done:stop] = extract(inception_pixels(make_images(done, stop), config))
            bar.update(stop - done)
            done = stop
            keep(done, progress)
    return progress['features']


def arrays_digest(arrays):
    """SHA-1 of named arrays (names, dtypes, shapes and bytes): kept with them, so a file changed after it was
    written (by hand, by a bad copy) is told from what was computed."""
    digest = hashlib.sha1()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f'{name}:{array.dtype.str}:{array.shape}:'.encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def kept_arrays(path, what, valid, compute):
    """The arrays of the .npz file path when they are what was written (their arrays_digest, kept beside them
    as 'arrays_sha1'), all finite, and a valid(arrays) `what`; else compute()'s, written to it atomically (a
    damaged, changed, foreign or non-finite file is replaced whole, with a warning). A path that is a folder, under
    a file, or unreadable is a one-line error before anything is computed."""
    check_destination(path, what)
    if os.path.lexists(path):
        try:
            with np.load(path) as saved:
                arrays = {name: saved[name] for name in saved.files}
        except PermissionError as error:
            raise UserError(f'cannot read {path} ({error.strerror}); make it readable, or move it away') from None
        except Exception as error:  # whatever a damaged file raises in numpy's reader (zip, pickle, format)
            print(f'warning: {path} is damaged ({type(error).__name__}); computing {what} again')
        else:
            kept = str(arrays.pop('arrays_sha1', ''))
            as_written = False
            try:  # as written, every kept number finite (a NaN would hang the FID's square root), the caller's check
                as_written = kept == arrays_digest(arrays)
                usable = as_written and all(
                    np.isfinite(array).all() for array in arrays.values()
                    if np.issubdtype(array.dtype, np.number)) and valid(arrays)
            except (KeyError, ValueError, TypeError, IndexError):
                usable = False
            if usable:
                print(f'{what} from {path}')
                return arrays
            changed = '' if as_written else ' (its arrays changed since it was written)' \
                if kept else ' (written before kept arrays carried their digest)'
            print(f'warning: {path} does not hold {what} for this run{changed}; computing it again')
    arrays = compute()
    process.write_atomically(path, lambda f: np.savez(f, arrays_sha1=np.array(arrays_digest(arrays)), **arrays))
    print(f'wrote {path}: {what}')
    return arrays


def test_statistics(config, extract, images):
    """Mean and covariance of the test images' pool_3 features, cached in fid_cache_directory by dataset and the
    SHA-1 of the images (a changed image set is another file)."""
    digest = hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()
    path = os.path.join(config['fid_cache_directory'], f'statistics-{config["dataset"]}-{len(images)}images_'
                                                       f'{digest[:16]}.npz')
    progress = path[:-len('.npz')] + '.progress.npz'

    def compute():
        features = resumable_features(extract, lambda start, stop: images[start:stop], len(images), config,
                                      progress, f'images={digest}', 'test images')
        mu, sigma = fid.feature_statistics(features)
        return {'images_sha1': np.array(digest), 'mu': mu, 'sigma': sigma}
    saved = kept_arrays(path, 'test statistics', lambda arrays: str(arrays['images_sha1']) == digest and
                        arrays['mu'].shape == (fid.FEATURES,) and arrays['sigma'].shape == (fid.FEATURES,) * 2,
                        compute)
    discard_progress(progress)
    return saved['mu'], saved['sigma']


SAMPLER_FIT_IMAGES = 60000  # training images whose posterior means the fitted samplers use (all of MNIST's)
HELD_OUT = 0.1  # their last tenth scores gmm's and flow's densities (the mixture's size, the flow's best epoch)
MAX_GMM_COMPONENTS = SAMPLER_FIT_IMAGES - round(SAMPLER_FIT_IMAGES * HELD_OUT)  # one latent each, in the fit's part
LATENTS_ARE = {'means': 'training posterior means', 'samples': 'samples of the training posteriors'}  # --fit_to


def training_images(config, data, count):
    """The first count training images as the model sees them (binarised once, like the test set)."""
    train = data['train'][:count]
    if config['dataset'] == 'celebA':  # file names: checked, then decoded as the training input does
        datasets.check_celeba_files(list(train))
        train = datasets.celeba_pixels(datasets.decode_celeba_files(list(train), config))
    return datasets.evaluation_images(config, train)


def training_posteriors(sess, outputs, config, data):
    """[means, standard deviations] of q(z|x) of the first SAMPLER_FIT_IMAGES training images: what the fitted
    samplers fit (the means, or with --fit_to samples, draws of both)."""
    return vae.run_in_batches(sess, [outputs.z_mean, outputs.z_std], outputs.images,
                              training_images(config, data, SAMPLER_FIT_IMAGES))


def held_out_split(latents):
    """(fit, held out): the last HELD_OUT of the latents (at least one) are held out."""
    held = max(1, int(round(len(latents) * HELD_OUT)))
    return latents[:-held], latents[-held:]


def posterior_draw(z_means, z_stds, seed):
    """One seeded sample of q(z|x) per image."""
    return (z_means + z_stds * np.random.RandomState(seed).standard_normal(z_means.shape)).astype(np.float32)


def fit_digest(*how):
    return f'fit_{hashlib.sha1(repr(how).encode()).hexdigest()[:8]}'


def sampler_settings(config, options, data):
    """What --sampler's samples depend on besides the checkpoint, as parts of a file name (keying its FID record
    and two_stage's kept fit): the seed of its draws; for gmm and two_stage, a digest of what they are fitted to
    (how many training images, --num_train_images can lower it; for CelebA, the files' names and bytes) and how;
    for two_stage, its epochs too."""
    seed = f'seed{config["seed"]}'
    if options['sampler'] == 'prior':
        return [seed]
    fitted = min(len(data['train']), SAMPLER_FIT_IMAGES)
    if config['dataset'] == 'celebA':  # a folder may hold other faces on a later call: the fit is to these files
        paths = [str(path) for path in data['train'][:fitted]]
        datasets.check_celeba_files(paths)  # inference lists the training files unchecked: a bad one, by name
        fitted = (fitted, datasets.files_digest(paths))
    fitting = () if options['fit_to'] == 'means' else ('samples',)  # the means: keyed as they always were
    if options['sampler'] == 'gmm':  # a fixed size is keyed as the 10-component mixture always was
        size = options['gmm_components']
        how = (size, *fitting, fitted) if size else \
            ('held-out', mixture.SIZES, mixture.MAX_ITERATIONS, HELD_OUT, *fitting, fitted)
        return [seed, fit_digest(*how)]
    if options['sampler'] == 'flow':
        return [f'e{options["flow_epochs"]}', seed, fit_digest(flow.FIT_SETTINGS, HELD_OUT, *fitting, fitted)]
    epochs = options['two_stage_epochs']  # its schedule: the default 40 epochs keyed as they always were
    return [f'e{epochs}', seed, fit_digest(two_stage.fit_settings(epochs), *fitting, fitted)]


def refinement(options):
    """r<steps> in the names of what --refine_steps changes, the FID record and the grid, not the kept fit it
    refines the draws of (nothing without it: names stay as they were)."""
    return [f'r{options["refine_steps"]}'] if options['refine_steps'] else []


def refined(sess, outputs, latents, steps):
    """The latents after `steps` steps of the encoder-decoder chain z <- the posterior mean of z's decoded image
    (Rezende et al. 2014's chain, appendix F, with the mean in place of a draw): a draw of a fitted density lands
    near, not on, the latents the encoder gives images, and a step moves it to the encoder's reading of what the
    decoder drew there."""
    for _ in range(steps):
        latents = vae.run_in_batches(sess, outputs.z_mean, outputs.images,
                                     vae.run_in_batches(sess, outputs.generation, outputs.z, latents))
    return latents


def check_fit_images(config, options, count):
    """Refuses, in one line, a fitted sampler with too few training latents to fit (before anything is written)."""
    sampler, least = options['sampler'], 2
    if sampler == 'gmm':
        least = options['gmm_components'] or mixture.SIZES[0]
        least += max(1, int(round(least * HELD_OUT / (1 - HELD_OUT))))  # the fit's and the held-out latents
    if count < least:
        raise UserError(f'the {sampler} sampler needs {least} training posterior means '
                        f'{"(a component each, and the held-out tenth) " if sampler == "gmm" else ""}and this run '
                        f'has {count} training images; fit it to more with --num_train_images 0 (the whole training '
                        'set: the fit\'s images, not the model\'s), or use --sampler prior')


def fitted_sampler(sess, outputs, config, data, epoch, weights, options):
    """The density of a fitted --sampler (mixture.py, flow.py, two_stage.py) for this checkpoint, fitted to the
    posterior means of its training images (or samples of their posteriors, --fit_to samples) and kept in the run
    folder (<sampler>/model_<N>-<sampler_settings>-weights_<digest>.npz): later calls read it back instead of
    fitting it again. gmm and flow are scored on the
    held-out tenth of the latents (their arrays keep it); the second stage is fitted to all of them."""
    sampler = options['sampler']
    check_fit_images(config, options, min(len(data['train']), SAMPLER_FIT_IMAGES))
    name = '-'.join([f'model_{epoch}', *sampler_settings(config, options, data), f'weights_{weights[:10]}'])
    z_dim, latents_are = config['z_dim'], LATENTS_ARE[options['fit_to']]

    def valid(arrays):  # (kept_arrays counts a KeyError, IndexError or ValueError raised here as invalid too)
        if sampler == 'gmm':
            size = len(arrays['weights'])
            mixture.as_mixture(arrays, 0)  # each covariance positive definite
            return (arrays['weights'].shape, arrays['means'].shape, arrays['covariances'].shape) == \
                ((size,), (size, z_dim), (size, z_dim, z_dim)) and \
                arrays['sizes'].shape == arrays['held_out_log_likelihoods'].shape == (len(arrays['sizes']),) and \
                np.isfinite(mixture.held_out_log_likelihood(arrays)) and \
                size == (options['gmm_components'] or size)
        shapes = FITTED_SAMPLERS[sampler].weight_shapes(z_dim)
        return {name: value.shape for name, value in arrays.items() if name in shapes} == shapes and \
            all(np.issubdtype(arrays[name].dtype, np.floating) for name in shapes) and \
            (sampler != 'flow' or arrays['held_out_log_likelihood'].shape == ())

    def fit():
        z_means, z_stds = training_posteriors(sess, outputs, config, data)
        samples = options['fit_to'] == 'samples'
        if sampler == 'gmm':  # with samples: one draw of q(z|x) of each image
            latents = posterior_draw(z_means, z_stds, config['seed']) if samples else z_means
            arrays = mixture.fit(*held_out_split(latents), options['gmm_components'], config['seed'])
            print(f'fitted a {mixture.components(arrays)}-component Gaussian mixture to {len(z_means)} '
                  f'{latents_are}')
        elif sampler == 'flow':
            (train, held_out), (train_stds, held_out_stds) = held_out_split(z_means), held_out_split(z_stds)
            if samples:  # a fresh draw of the fit's posteriors each epoch, one seeded draw of the held-out ones
                held_out = posterior_draw(held_out, held_out_stds, config['seed'])
            arrays, best = flow.fit(train, held_out, options['flow_epochs'], config['seed'],
                                    train_stds if samples else None)
            if arrays is None:
                raise UserError('no epoch of the flow scored the held-out latents finitely; nothing was kept')
            print(f'fitted the flow for {options["flow_epochs"]} epochs: the best held-out epoch {best["epoch"]}, '
                  f'train log-likelihood {best["train_log_likelihood"]:.3f} nats')
            arrays['held_out_log_likelihood'] = np.array(best['held_out_log_likelihood'])
        else:
            arrays, loss = two_stage.fit(z_means, options['two_stage_epochs'], config['seed'],
                                         z_stds if samples else None)
            if not all(np.all(np.isfinite(value)) for value in arrays.values()):
                raise UserError(f'the second stage became non-finite in fitting (last loss {loss}); nothing was kept')
            print(f'fitted the second stage for {options["two_stage_epochs"]} epochs: last epoch\'s loss {loss:.3f} '
                  f'nats, gamma {np.exp(arrays["log_gamma"]):.4f}')
        return arrays
    what = {'gmm': 'the Gaussian mixture', 'flow': 'the flow', 'two_stage': 'the second stage'}[sampler]
    arrays = kept_arrays(os.path.join(config['run_directory'], sampler, f'{name}.npz'), what, valid, fit)
    held_out = held_out_log_likelihood(sampler, arrays)
    if held_out is not None:
        print(f'held-out log-likelihood of the {latents_are} under {what}: {held_out:.3f} nats')
    return arrays


def held_out_log_likelihood(sampler, arrays):
    """The mean log-likelihood of the held-out training posterior means under a fitted density, in nats (None
    for the second stage, fitted to all of them)."""
    if sampler == 'gmm':
        return mixture.held_out_log_likelihood(arrays)
    return float(arrays['held_out_log_likelihood']) if sampler == 'flow' else None


def fit_facts(sampler, arrays, options):
    """What a fitted sampler's FID record says of its fit."""
    if sampler == 'gmm':
        return {'fit_to': options['fit_to'], 'gmm_components': mixture.components(arrays),
                'held_out_log_likelihood': held_out_log_likelihood(sampler, arrays)}
    if sampler == 'flow':
        return {'fit_to': options['fit_to'], 'flow_epochs': options['flow_epochs'],
                'held_out_log_likelihood': held_out_log_likelihood(sampler, arrays)}
    return {'fit_to': options['fit_to'], 'two_stage_epochs': options['two_stage_epochs']}


def sampler_latents(sess, outputs, config, data, epoch, prefix, options, count):
    """count latents to decode, seeded by the run's seed: --sampler 'prior' N(0, I), or draws of the density
    fitted to the training set's posterior means (fitted_sampler), after --refine_steps steps of the chain (refined);
    and what the FID record says of the fit."""
    if options['sampler'] == 'prior':
        latents, facts = vae.prior_latents(sess, outputs, vae.fixed_latents(config, count)), {}
    else:
        arrays = fitted_sampler(sess, outputs, config, data, epoch, run_folder.checkpoint_digest(prefix), options)
        latents = FITTED_SAMPLERS[options['sampler']].sample(arrays, count, config['seed'])
        facts = fit_facts(options['sampler'], arrays, options)
    steps = options['refine_steps']
    return refined(sess, outputs, latents, steps), {**facts, 'refine_steps': steps}


def write_fid(sess, outputs, config, data, epoch, prefix, options):
    """The FID of the test set's reconstructions and of --fid_samples decodes of --sampler's latents, against the
    test images (their grey levels, never binarised), each kept as its own record in evaluations/."""
    test_images = data['test_images'][:options['num_test'] or None]
    weights = run_folder.checkpoint_digest(prefix)
    inception = fid.load_weights(fid.weights_path(config['fid_cache_directory'], options['fid_weights'] or None))
    extract = fid.feature_extractor(inception, progress=False)  # resumable_features shows the progress
    real = test_statistics(config, extract, test_images)
    sampler, samples = options['sampler'], options['fid_samples']
    settings = {'reconstructions': [f'n{len(test_images)}'],
                sampler: [f'n{samples}', *sampler_settings(config, options, data), *refinement(options)]}
    paths = {source: evaluation_path(config, epoch, weights, test_images, 'fid', source, *keys)
             for source, keys in settings.items()}
    counts = {'reconstructions': len(test_images), sampler: samples}
    kept = {source: kept_record(path, {'checkpoint': f'model_{epoch}', 'weights_sha1': weights, 'scored': source,
                                       'count': counts[source], 'test_images': len(test_images)}, ('fid',))
            for source, path in paths.items()}
    # The latents are drawn before any record is written (a refused sampler writes nothing), unless already scored.
    latents, facts = (None, {}) if kept[sampler] else \
        sampler_latents(sess, outputs, config, data, epoch, prefix, options, samples)
    seen = datasets.evaluation_images(config, test_images)  # what the model encodes (binarised for bernoulli)
    scored = {'reconstructions': (len(test_images), lambda start, stop: reconstruct(sess, outputs, seen[start:stop])),
              sampler: (samples, lambda start, stop: generate(sess, outputs, latents[start:stop]))}
    for source, (count, make_images) in scored.items():
        path = paths[source]
        if kept[source]:
            print(f'{path} holds this FID: {kept[source]["fid"]}')
            continue
        progress = path[:-len('.json')] + '.progress.npz'
        features = resumable_features(extract, make_images, count, config, progress,
                                      f'weights={weights} {os.path.basename(path)} seed={config["seed"]}', source)
        score = fid.frechet_distance(*real, *fid.feature_statistics(features))
        print(f'FID of {count} {source} against {len(test_images)} test images: {score:.2f}')
        write_record(path, {'checkpoint': f'model_{epoch}', 'weights_sha1': weights, 'fid': score, 'scored': source,
                            'count': count, 'test_images': len(test_images),
                            **(facts if source == sampler else {}),
                            'decoded': 'pixel probabilities' if config['likelihood'] == 'bernoulli' else 'the mean',
                            'inception': f'{fid.WEIGHTS_REQUIREMENT} {fid.WEIGHTS_MEMBER} ({fid.WEIGHTS_SHA1})'})
        hparams.write_metrics(config, epoch, prefix, {f'fid/{source}': score})
        discard_progress(progress)


# vae_inference.py's own command-line flags (every config key is one too, the run folder's config.json giving the
# model's): {name: (default, meaning)}, None for a switch.
FLAGS = {
    'checkpoint': (-1, 'epoch of the model_<epoch> checkpoint to use; -1 = the newest'),
    'evaluate': (None, 'test-set metrics and the importance-weighted bound -> a record in evaluations/ (one per '
                       'checkpoint, weights, k and image set); interrupted, it goes on where it stopped when run '
                       'again'),
    'k': (1000, 'importance samples per test image for --evaluate (the literature protocol: 5000)'),
    'num_test': (0, 'use the first this many test images (0 = all)'),
    'interpolate': (None, 'interpolation_model_<N>.png: decodes along lines between pairs of test posterior means'),
    'traverse': (None, 'traversal_model_<N>.png: the 8 latent dimensions with the largest KL, each over [-3, 3]'),
    'manifold': (None, 'manifold_model_<N>.png: the 2-D latent manifold (a z_dim 2 model, e.g. --dataset MNIST_2d)'),
    'scatter': (None, 'latent_scatter_model_<N>.png: test posterior means on their first two principal components'),
    'curves': (None, 'training_curves.png from the TensorBoard logs'),
    'projector': (None, "TensorBoard's projector of the test posterior means, with labels and a sprite of the "
                        'images, in the log folder'),
    'fid': (None, 'sample quality: the FID of the test set\'s reconstructions and of --fid_samples decodes of '
                  '--sampler, against the test images (Inception-v3 2015-12-05 pool_3) -> records in evaluations/'),
    'fid_samples': (10000, 'samples decoded for --fid'),
    'sampler': ('prior', "the latents of --fid and of the generations grid: 'prior' N(0, I), or a density fitted "
                         "to the training posterior means and kept in the run folder's <sampler>/: 'gmm' a Gaussian "
                         "mixture (--gmm_components), 'flow' a RealNVP flow (--flow_epochs), 'two_stage' Dai & "
                         "Wipf's second VAE (--two_stage_epochs); the grid is then "
                         'generations_<sampler>_model_<N>.png'),
    'gmm_components': (0, "the gmm sampler's components; 0 = the size of 10, 20, 50, 100, 200 whose fit to nine "
                          'tenths of the posterior means scores the held-out tenth best (Ghosh et al. 2020: 10)'),
    'flow_epochs': (50, "epochs the flow sampler's RealNVP is fitted for (the epoch scoring the held-out tenth of "
                        'the posterior means best is kept)'),
    'two_stage_epochs': (40, "epochs the two_stage sampler's second VAE is fitted for, its learning rate halved "
                             "after each quarter (once per checkpoint: it is kept in the run folder's two_stage/)"),
    'fit_to': ('means', "what gmm, flow and two_stage fit: the training posterior 'means' (Ghosh et al.), or "
                        "'samples' of q(z|x) (Dai & Wipf; flow and two_stage draw afresh each epoch, gmm once)"),
    'refine_steps': (0, "steps of the encoder-decoder chain applied to --sampler's latents before they are decoded "
                        '(--fid and the generations grid): z <- the posterior mean of the image z decodes to'),
    'fid_weights': ('', "the Inception weights file (default_1.pt) for --fid; '' = fid_cache_directory's copy, "
                        'downloaded there on first use'),
    'export': ('', 'a new run folder holding only the checkpoint\'s weights (no optimizer state), config.json and '
                   'the GIF frames: a run to share or commit'),
    'saved_model': ('', 'a new folder holding the checkpoint as a TensorFlow SavedModel (signatures encode, decode, '
                        'reconstruct, sample, importance_weighted_bound), loadable without this repository'),
}


def main(argv):
    config, options = command_line.parse_command_line(argv, FLAGS, __doc__.split('\n\n')[0], from_run=True)
    if not 0 < options['k'] <= MAX_K:
        raise UserError(f'--k must be in 1..{MAX_K:,} (the literature protocol: 5000), got {options["k"]}')
    if options['num_test'] < 0 or (options['fid'] and options['num_test'] == 1):
        least = '2 or more with --fid (the test features\' covariance)' if options['fid'] else 'positive'
        raise UserError(f'--num_test must be 0 (all) or {least}, got {options["num_test"]}')
    if options['checkpoint'] < -1:
        raise UserError(f'--checkpoint {options["checkpoint"]} is no checkpoint; pass an epoch number of a '
                        'model_<epoch> checkpoint, or -1 (the default) for the newest')
    if options['interpolate'] and options['num_test'] == 1:
        raise UserError('--interpolate draws lines between pairs of test images; pass --num_test 2 or more')
    if options['manifold'] and config['z_dim'] != 2:
        raise UserError(f'--manifold needs a model with z_dim 2, this one has {config["z_dim"]}; train one '
                        'with python vae.py --dataset MNIST_2d and pass --dataset MNIST_2d here')
    if options['sampler'] not in SAMPLER_TITLES:
        raise UserError(f'--sampler must be one of {", ".join(SAMPLER_TITLES)} (got {options["sampler"]!r})')
    if not 2 <= options['fid_samples'] <= MAX_FID_SAMPLES:
        raise UserError(f'--fid_samples must be in 2..{MAX_FID_SAMPLES:,} (the protocol: 10,000), got '
                        f'{options["fid_samples"]}')
    for flag, bound in (('two_stage_epochs', MAX_TWO_STAGE_EPOCHS), ('flow_epochs', MAX_FLOW_EPOCHS)):
        if not 1 <= options[flag] <= bound:
            raise UserError(f'--{flag} must be in 1..{bound:,} (the default: {FLAGS[flag][0]}), got {options[flag]}')
    if not 0 <= options['refine_steps'] <= MAX_REFINE_STEPS:
        raise UserError(f'--refine_steps must be in 0..{MAX_REFINE_STEPS} (0: the sampler\'s draws as they are), got '
                        f'{options["refine_steps"]}')
    if options['fit_to'] not in ('means', 'samples'):
        raise UserError(f"--fit_to must be 'means' or 'samples', got {options['fit_to']!r}")
    if options['fit_to'] == 'samples' and config['iaf_depth']:
        raise UserError(f"--fit_to samples draws from a Gaussian posterior, and this run's q(z|x) is a flow (iaf_depth "
                        f"{config['iaf_depth']}); fit to the posterior centres (--fit_to means, the default)")
    if not 0 <= options['gmm_components'] <= MAX_GMM_COMPONENTS:
        raise UserError(f'--gmm_components must be 0 (sized by the held-out likelihood) or a count of components up '
                        f'to {MAX_GMM_COMPONENTS:,} (one latent each), got {options["gmm_components"]}')
    pictures = [name for name in ('evaluate', 'fid', 'interpolate', 'traverse', 'manifold', 'scatter', 'curves',
                                  'projector') if options[name]]
    destinations = [name for name in ('saved_model', 'export') if options[name]]
    for name in destinations:  # checked by the rule of run folders: TensorFlow will read them back
        if config_keys.is_pattern(options[name]):
            raise UserError(f'--{name} must be {config_keys.LITERAL_PATH}, got {options[name]!r}; pass another '
                            f'--{name}')
    if destinations and len(destinations + pictures) > 1:
        raise UserError(f'--{" --".join(destinations + pictures)} cannot go together: --{destinations[0]} writes the '
                        'checkpoint into a new folder and nothing else; run each in a command of its own')
    if options['curves']:
        write_curves(config)
        if pictures == ['curves']:
            return

    sess, outputs, epoch = restore(config, None if options['checkpoint'] < 0 else options['checkpoint'])
    prefix = os.path.join(run_folder.run_path(config, 'model_directory'), f'model_{epoch}')  # the one restored
    if options['saved_model']:  # the checkpoint alone, as a SavedModel (saved_model.py)
        sess.close()
        return saved_model.write_saved_model(config, epoch, prefix, options['saved_model'])
    if options['export']:
        sess.close()
        return export_run(config, epoch, options['export'])
    with sess:
        planned = planned_pictures(config, options, epoch, samples=not pictures)
        data = datasets.load_dataset(config, training=False)
        test_images = datasets.evaluation_images(config, data['test_images'])
        if options['num_test']:
            test_images = test_images[:options['num_test']]
        if not pictures:
            write_samples(sess, outputs, config, data, test_images, epoch, prefix, options, planned)
        if options['evaluate']:
            write_evaluation(sess, outputs, config, epoch, prefix, test_images, options['k'])
        if options['fid']:
            write_fid(sess, outputs, config, data, epoch, prefix, options)
        if options['interpolate']:
            rows = min(8, len(test_images) // 2)
            write_grid(config, planned['interpolate'], interpolation_grid(sess, outputs, test_images, rows), rows,
                       GRID_COLUMNS + 2, f'epoch {epoch}: interpolation between posterior means')
        if options['traverse']:
            rates = dimension_rates(sess, outputs, test_images[:1000])
            dimensions = np.argsort(-rates)[:TRAVERSE_DIMENSIONS]
            write_grid(config, planned['traverse'], traversal_grid(sess, outputs, test_images, dimensions),
                       len(dimensions), TRAVERSE_STEPS,
                       f'epoch {epoch}: dims {", ".join(map(str, dimensions))} over [-3, 3]')
        if options['manifold']:
            write_grid(config, planned['manifold'], manifold_grid(sess, outputs), MANIFOLD_SIDE, MANIFOLD_SIDE,
                       f'epoch {epoch}: 2-D latent manifold')
        if options['projector'] or options['scatter']:  # both show the test posterior means: encode them once
            z_means = vae.run_in_batches(sess, outputs.z_mean, outputs.images, test_images)
            labels = data['test_labels'][:len(test_images)] if 'test_labels' in data else None
        if options['projector']:
            write_projector(config, epoch, z_means, data['test_images'][:len(test_images)], labels,
                            picture_settings(config, options, 'test'))
        if options['scatter']:
            save_scatter(planned['scatter'], z_means, labels, f'test posterior means, epoch {epoch}')
            print(f'wrote {planned["scatter"]}')
    if not pictures:
        write_gif(config, planned['gif'])


if __name__ == '__main__':
    process.exit_on_user_error(lambda: main(sys.argv[1:]))
