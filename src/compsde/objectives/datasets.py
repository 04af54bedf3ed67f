"""Loaders for standard dataset file formats (nothing is downloaded: the files are the user's).

* LIBSVM / SVMlight text format, the format of the classic compression benchmarks (a9a, w8a, …):
  one sample per line, ``label index:value index:value ...`` with 1-based, increasing indices;
  ``#`` starts a comment.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from compsde.core.checks import check_int
from compsde.core.tensors import check_memory


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
