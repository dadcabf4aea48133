import pytest
import torch

from dashlib.config import DataConfig
from dashlib.data import DataNotFoundError, load_dataset


def test_digits_is_embedded_scaled_and_split():
    ds = load_dataset(DataConfig(name="digits", image_size=8))
    assert ds.num_classes == 10 and ds.channels == 1 and ds.image_size == 8
    assert len(ds.train) + len(ds.test) == 1797
    assert abs(len(ds.test) - 0.2 * 1797) < 15
    for split in (ds.train, ds.test):
        assert split.x.min() >= -1 and split.x.max() <= 1 and split.x.dtype == torch.float32
        assert torch.equal(split.y.unique(), torch.arange(10))


def test_digits_split_is_fixed_and_disjoint():
    a = load_dataset(DataConfig(name="digits"))
    b = load_dataset(DataConfig(name="digits"))
    assert torch.equal(a.test.x, b.test.x)
    train_rows = {tuple(r.tolist()) for r in a.train.x.flatten(1)}
    overlap = sum(tuple(r.tolist()) in train_rows for r in a.test.x.flatten(1))
    assert overlap <= 5  # sklearn digits has a handful of exact duplicate images


def test_digits_upsampled():
    ds = load_dataset(DataConfig(name="digits", image_size=16))
    assert ds.train.x.shape[1:] == (1, 16, 16)


def test_synthetic_classes_are_distinguishable():
    ds = load_dataset(DataConfig(name="synthetic", image_size=8, synthetic_size=200))
    means = torch.stack([ds.train.x[ds.train.y == k].mean(0) for k in range(ds.num_classes)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).add(torch.eye(4) * 99).min() > 0.5


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"),
                                          ("cifar100", "cifar-100-python"),
                                          ("mnist", "MNIST")])
def test_missing_torchvision_data_gives_one_clear_error(name, folder, tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(DataConfig(name=name, image_size=32, data_root=str(tmp_path / "nowhere")))
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and folder in msg
    assert "--set data.download=true" in msg and "--set data.data_root=" in msg


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_the_mnist_hint_names_its_four_files_and_where_they_go(name, folder, tmp_path):
    """MNIST is four gzipped files, not one archive; torchvision reads them unpacked from raw/."""
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(DataConfig(name=name, image_size=28, data_root=str(tmp_path / "nowhere")))
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert f"gunzip them into DIR/{folder}/raw/" in msg
