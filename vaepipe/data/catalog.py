"""The datasets this project knows (:data:`DATASETS`, the one list that params name): their
format, archives, checksums, shapes, class names and URLs. How their raw files are found, read
and checked is their format's (:mod:`vaepipe.data.formats`). Adding a dataset is one
:class:`DatasetSpec` in :data:`DATASETS` (and, for a new kind of files, a format).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from vaepipe.config import Params, check_name, register_check

SPLITS = ("train", "val", "test")
IMAGE_SIZES = (28, 32, 64)  # the square sizes a model can be built for (folders: data.image_size)
FOLDER = "folder"  # data.dataset for a folder of images (vaepipe.data.folder), not a spec here


class DataError(Exception):
    """Base class of the errors a data stage reports to the user and exits on."""


class DataFormatError(DataError, ValueError):
    """A file that is corrupt, truncated or not in the expected format; the message names it."""


class DataSourceError(DataError):
    """No source could provide verified raw files; the message lists each place tried."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's raw files come from and what they must look like.

    ``format`` names a registered :class:`vaepipe.data.formats.RawFormat`; ``archives`` maps
    each upstream archive name to its md5 (from torchvision); ``raw_md5`` maps each
    decompressed raw file to its pinned md5, or is None where no such sums are published;
    ``counts`` is the number of records of each split upstream; the number of classes is the
    number of ``class_names``.
    """

    name: str
    format: str
    archives: Mapping[str, str]
    base_urls: tuple[str, ...]
    raw_md5: Mapping[str, str] | None
    standard_dir: str | None
    counts: Mapping[str, int]
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    apt_package: str | None = None


IDX_COUNTS = {"train": 60000, "test": 10000}

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    format="idx",
    # torchvision.datasets.FashionMNIST.resources
    archives={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    base_urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    raw_md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    standard_dir="/usr/share/datasets/fashion-mnist",
    counts=IDX_COUNTS,
    image_shape=(1, 28, 28),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    apt_package="dataset-fashion-mnist",
)

MNIST = DatasetSpec(
    name="mnist",
    format="idx",
    # torchvision.datasets.MNIST.resources
    archives={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    base_urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    # No md5s of the decompressed MNIST files are published, so a local MNIST copy is only
    # checked structurally (IDX magic, 28x28 dims, 60000/10000 records, labels 0..9); the
    # upstream .gz md5 is checked when the files come from the official download.
    raw_md5=None,
    standard_dir="/usr/share/datasets/mnist",
    counts=IDX_COUNTS,
    image_shape=(1, 28, 28),
    class_names=tuple(str(d) for d in range(10)),
)

CIFAR10 = DatasetSpec(
    name="cifar10",
    format="cifar",
    # torchvision.datasets.CIFAR10.tgz_md5
    archives={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    base_urls=("https://www.cs.toronto.edu/~kriz/",),
    # torchvision.datasets.CIFAR10.train_list, .test_list and .meta
    raw_md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    standard_dir=None,
    counts={"train": 50000, "test": 10000},
    image_shape=(3, 32, 32),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"),
)

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (FASHION_MNIST, MNIST, CIFAR10)}


def get_spec(dataset: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered under ``dataset``; a ValueError names the choices."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}") from None



@register_check
def _check_dataset(params: Params) -> None:
    check_name("data.dataset", params.data.dataset, {**DATASETS, FOLDER: None})
