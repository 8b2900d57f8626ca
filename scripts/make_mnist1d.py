"""Regenerate the bundled MNIST-1D file ``src/blockzoo/data/files/mnist1d.npz``.

MNIST-1D: Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D" (arXiv
2011.14439), data generator from the ``mnist1d`` package (Apache-2.0,
https://github.com/greydanus/mnist1d). This script calls the package's own
generator with its default arguments (5000 samples, 4000 train / 1000 test,
length 40, seed 42): ``make_dataset(get_dataset_args())``. It never calls
``get_dataset``, which tries to download a pickle.

Usage:
    pip install mnist1d            # or: pip install -e ".[mnist1d]"
    python scripts/make_mnist1d.py           # writes the file, checks its sha256
    python scripts/make_mnist1d.py --check   # only compares arrays with the bundled file

The arrays are stored as float32 / int64; the sha256 below is of the arrays'
bytes (not of the zip container, whose timestamps vary).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "blockzoo" / "data" / "files" / "mnist1d.npz"
# sha256 over x, y, x_test, y_test, t (in that order, C-contiguous bytes).
ARRAYS_SHA256 = "610d2a110f5297beb0904cb1db58fafe795796730dbda4728a15deadc59a193c"


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in ("x", "y", "x_test", "y_test", "t"):
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def generate() -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        sys.exit("make_mnist1d: the 'mnist1d' package is needed: pip install mnist1d")
    ds = make_dataset(get_dataset_args())
    return dict(
        x=ds["x"].astype(np.float32),
        y=ds["y"].astype(np.int64),
        x_test=ds["x_test"].astype(np.float32),
        y_test=ds["y_test"].astype(np.int64),
        t=ds["t"].astype(np.float32),
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the bundled file, write nothing")
    args = p.parse_args()
    arrays = generate()
    digest = arrays_sha256(arrays)
    if digest != ARRAYS_SHA256:
        print(f"make_mnist1d: sha256 {digest} differs from the expected {ARRAYS_SHA256}", file=sys.stderr)
        return 1
    if args.check:
        with np.load(OUT) as f:
            same = all(np.array_equal(f[k], v) for k, v in arrays.items())
        print(f"bundled file {'matches' if same else 'DIFFERS from'} the generator (sha256 {digest})")
        return 0 if same else 1
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, arrays sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
