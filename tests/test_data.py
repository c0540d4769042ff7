"""The MNIST loader: real files, checksums, corruption, download, offline."""
import gzip
import os
import pathlib
import shutil

import numpy as np
import pytest

import datasets
import process
from conftest import MNIST_DIR


def test_load_mnist_reads_the_real_files(mnist):
    assert mnist['train_images'].shape == (60000, 28, 28, 1)
    assert mnist['test_images'].shape == (10000, 28, 28, 1)
    assert mnist['train_images'].dtype == np.float32
    assert mnist['train_images'].min() == 0.0 and mnist['train_images'].max() == 1.0
    assert mnist['train_labels'][:5].tolist() == [5, 0, 4, 1, 9]
    assert np.bincount(mnist['test_labels']).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_load_mnist_reads_uncompressed_files(tmp_path):
    for name in datasets.MNIST_FILES:
        with gzip.open(os.path.join(MNIST_DIR, name + '.gz'), 'rb') as f:
            (tmp_path / name).write_bytes(f.read())
    assert datasets.load_mnist(str(tmp_path), mirrors=())['test_images'].shape == (10000, 28, 28, 1)


def copy_mnist(folder):
    for name in datasets.MNIST_FILES:
        shutil.copy(os.path.join(MNIST_DIR, name + '.gz'), folder)


def test_load_mnist_rejects_a_corrupted_file(tmp_path):
    copy_mnist(tmp_path)
    path = tmp_path / 't10k-labels-idx1-ubyte.gz'
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[100] = (data[100] + 1) % 10  # one wrong label
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(process.UserError, match='t10k-labels-idx1-ubyte has MD5 .* not the published'):
        datasets.load_mnist(str(tmp_path), mirrors=())


def test_load_mnist_rejects_a_truncated_file(tmp_path):
    copy_mnist(tmp_path)
    path = tmp_path / 'train-images-idx3-ubyte.gz'
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(process.UserError, match='cannot read .*train-images-idx3-ubyte.gz'):
        datasets.load_mnist(str(tmp_path), mirrors=())


def test_load_mnist_rejects_a_gzip_stream_damaged_inside(tmp_path):
    copy_mnist(tmp_path)
    path = tmp_path / 't10k-images-idx3-ubyte.gz'
    data = bytearray(path.read_bytes())
    data[5000:5100] = bytes(100)  # zeros inside the deflate stream: zlib's error, not a short file
    path.write_bytes(bytes(data))
    with pytest.raises(process.UserError, match='cannot read .*t10k-images-idx3-ubyte.gz'):
        datasets.load_mnist(str(tmp_path), mirrors=())


def test_missing_files_are_downloaded_and_verified(tmp_path):
    mirror = pathlib.Path(MNIST_DIR).resolve().as_uri() + '/'
    folder = tmp_path / 'mnist'
    data = datasets.load_mnist(str(folder), mirrors=('file:///nonexistent/mirror/', mirror))
    assert data['train_images'].shape == (60000, 28, 28, 1)
    assert sorted(os.listdir(folder)) == sorted(name + '.gz' for name in datasets.MNIST_FILES)


def test_a_download_with_the_wrong_checksum_is_not_kept(tmp_path):
    mirror = tmp_path / 'bad_mirror'
    mirror.mkdir()
    for name in datasets.MNIST_FILES:
        (mirror / (name + '.gz')).write_bytes(gzip.compress(b'not mnist'))
    folder = tmp_path / 'mnist'
    with pytest.raises(process.UserError, match='could not be downloaded .*checksum'):
        datasets.load_mnist(str(folder), mirrors=(mirror.as_uri() + '/',))
    assert os.listdir(folder) == []


def test_offline_and_missing_says_where_to_put_the_files(tmp_path):
    with pytest.raises(process.UserError, match=f'put the four MNIST IDX files .* in {tmp_path}'):
        datasets.load_mnist(str(tmp_path), mirrors=('file:///nonexistent/mirror/',))
