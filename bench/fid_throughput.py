"""Images a second through fid.py's Inception (pool_3 features) on this machine, by batch size.

    python bench/fid_throughput.py                            # batch sizes 10, 50; 200 CelebA-sized images each
    python bench/fid_throughput.py --batch_sizes 1,25,50,100 --images 100 --height 28 --width 28 --channels 1

One extractor (graph and session) per batch size; its first batch (TensorFlow preparing the graph's constants)
is run and left out of the timing. The weights come from the tests' cache .cache/fid (downloaded if missing).
"""
import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import fid  # noqa: E402
import utils  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch_sizes', default='10,50')
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--height', type=int, default=218)
    parser.add_argument('--width', type=int, default=178)
    parser.add_argument('--channels', type=int, default=3)
    parser.add_argument('--cache', default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                         '.cache', 'fid'))
    args = parser.parse_args()
    weights = fid.load_weights(fid.weights_path(args.cache))
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.height, args.width, args.channels),
                                               dtype=np.uint8)
    print(f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start')
    for batch_size in map(int, args.batch_sizes.split(',')):
        extract = fid.feature_extractor(weights, batch_size, progress=False)
        extract(images[:batch_size])  # the first run prepares the graph
        start = time.perf_counter()
        extract(images)
        seconds = time.perf_counter() - start
        print(f'batch {batch_size:4d}: {args.images / seconds:6.2f} images/s ({seconds:.1f} s for {args.images} '
              f'{args.height}x{args.width}x{args.channels}), load average {os.getloadavg()[0]:.2f}')
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f'peak resident memory {peak:.2f} GiB')


if __name__ == '__main__':
    utils.exit_on_user_error(main)
