"""Pictures: image grids, GIFs of the training frames, matplotlib figures and TensorBoard image summaries.

Grids take float images in the data's pixel range (value_range) and round them to uint8 pixels; every picture is
written through process.write_atomically.
"""
import glob
import os
import re

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

from process import UserError, tf1, write_atomically


def to_uint8(images, value_range=(0.0, 1.0)):
    """Float images in value_range to uint8 pixels, rounding rather than truncating."""
    low, high = value_range
    return np.clip(np.rint((np.asarray(images) - low) * (255 / (high - low))), 0, 255).astype(np.uint8)


def image_grid(images, rows, columns, value_range=(0.0, 1.0)):
    """A (rows*H, columns*W, C) uint8 mosaic of the first rows*columns images (floats in value_range)."""
    images = to_uint8(images[:rows * columns], value_range)
    count, height, width, channels = images.shape
    if count < rows * columns:
        images = np.concatenate([images, np.zeros((rows * columns - count, height, width, channels), np.uint8)])
    grid = images.reshape(rows, columns, height, width, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * height, columns * width, channels)


def save_grid(path, images, rows, columns, title=None, scale=2, value_range=(0.0, 1.0)):
    """Write a grid of images as PNG, upscaled `scale` times, with an optional title strip on top."""
    grid = image_grid(images, rows, columns, value_range)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).convert('RGB')
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    if title:
        titled = Image.new('RGB', (picture.width, picture.height + 16), 'white')
        titled.paste(picture, (0, 16))
        ImageDraw.Draw(titled).text((4, 2), title, fill='black')
        picture = titled
    write_atomically(path, lambda f: iio.imwrite(f, np.asarray(picture), extension='.png'))


def epoch_frames(folder):
    """[(epoch, path)] of the epoch_<N>.png frames in folder, in epoch order."""
    frames = []
    for path in glob.glob(os.path.join(glob.escape(str(folder)), 'epoch_*.png')):
        match = re.fullmatch(r'epoch_(\d+)\.png', os.path.basename(path))
        if match:
            frames.append((int(match.group(1)), path))
    return sorted(frames)


def save_gif(path, frame_paths, duration_ms=400):
    """Assemble PNG frames (one or more, all of one size) into a looping GIF; the last frame is held three times
    as long. A frame of another size (left by another run, say) is a one-line error naming it."""
    frames = []
    for frame in frame_paths:
        try:
            frames.append(np.asarray(Image.open(frame).convert('RGB')))
        except (OSError, ValueError) as error:
            raise UserError(f'{frame} is not a readable PNG frame ({error}); delete it') from None
        if frames[-1].shape != frames[0].shape:
            raise UserError(f'{frame} is {frames[-1].shape[1]}x{frames[-1].shape[0]} but {frame_paths[0]} is '
                            f'{frames[0].shape[1]}x{frames[0].shape[0]}: frames of two runs; move the odd ones away')
    durations = [duration_ms] * (len(frames) - 1) + [duration_ms * 3]
    # Pillow takes one duration for a single frame, a list for several.
    duration = durations if len(frames) > 1 else durations[0]
    write_atomically(path, lambda f: iio.imwrite(f, np.stack(frames), extension='.gif', duration=duration, loop=0))


def save_figure(path, figure, dpi=100):
    """A matplotlib figure as a PNG, through write_atomically."""
    write_atomically(path, lambda f: figure.savefig(f, format='png', dpi=dpi))


def png_summary(tag, path):
    """A TensorBoard image summary holding an already written PNG."""
    with open(path, 'rb') as f:
        encoded = f.read()
    height, width = iio.imread(encoded, extension='.png').shape[:2]
    image = tf1.Summary.Image(encoded_image_string=encoded, height=height, width=width, colorspace=3)
    return tf1.Summary(value=[tf1.Summary.Value(tag=tag, image=image)])
