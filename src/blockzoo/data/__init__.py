"""Data sets: bundled (MNIST-1D, digits), generated (toy problems, sequence tasks),
file-backed (MNIST, Fashion-MNIST, CIFAR-10) and CSV, all served as whole tensors.

``load_data(name)`` returns a ``Data`` bundle; ``list_datasets()`` names them. Every
module in this folder is imported here (registering its data sets) and its
``__all__`` re-exported, so a new file needs no edit of this one.
"""

from blockzoo.data.base import (
    Data,
    TensorData,
    TensorLoader,
    dataset_entry,
    list_datasets,
    load_data,
    register_dataset,
)
from blockzoo.registry import import_room

__all__ = [
    "Data",
    "TensorData",
    "TensorLoader",
    "dataset_entry",
    "list_datasets",
    "load_data",
    "register_dataset",
    *import_room(__name__, __path__, globals()),
]
