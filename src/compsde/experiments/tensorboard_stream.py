"""Stream a run's metrics rows to TensorBoard as they are computed (``compsde run/track --tensorboard DIR``).

Optional: it needs the ``tensorboard`` package (``pip install 'compsde[tensorboard]'``), which
``torch.utils.tensorboard`` writes its event files with; without it ``MetricsStream`` raises a ValueError
saying so, before the run starts.

Each series is one TensorBoard run, a folder ``DIR/<index> <label>`` (``DIR/<index> <label> (sde)`` for
its SDE after ``compsde track``), and each numeric column of metrics.csv is one scalar tag
(``loss_mean``, ``loss_q90``, ``bits``, ...) at the row's step, so TensorBoard draws every series on one
chart per column. The runner hands over all the rows computed so far each time it rewrites metrics.csv
(every ~2 s and after each series); a row is sent once, empty cells (NaN, ±inf) not at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from compsde.core.checks import check_path

__all__ = ["MetricsStream", "summary_writer_class"]

#: The columns of a metrics row that are not scalars of a step.
_NOT_SCALARS = ("series", "source", "group", "step")


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``; ValueError saying what to install when TensorBoard is not."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError(f"--tensorboard needs the tensorboard package, which is not installed ({e}): "
                         f"pip install 'compsde[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


def _folder_name(index: int, label: str, source: str) -> str:
    """A file-system-safe folder name for a series: separators and control characters become '_'."""
    name = f"{index:02d} {label}" + (" (sde)" if source == "sde" else "")
    return re.sub(r"[\\/\x00-\x1f\x7f:*?\"<>|]", "_", name).strip(". ") or f"{index:02d}"


class MetricsStream:
    """Writes metrics rows (``runner.SeriesResult.row``) to TensorBoard event files under ``logdir``."""

    def __init__(self, logdir: str | Path) -> None:
        self._writer_class = summary_writer_class()
        self.logdir = Path(check_path("--tensorboard", logdir))
        if not str(logdir).strip():
            raise ValueError(f"--tensorboard must name a directory, got {str(logdir)!r}")
        if self.logdir.exists() and not self.logdir.is_dir():
            raise ValueError(f"--tensorboard directory {str(self.logdir)!r} exists and is not a directory")
        self._writers: dict[tuple[int, str], Any] = {}
        self._last: dict[tuple[int, str], int] = {}  # the last step sent per (series, source)

    def send(self, results: Iterable[Any]) -> None:
        """Send the rows of ``results`` (``runner.SeriesResult``s) not sent before, and flush."""
        for r in results:
            key = (int(r.index), str(r.source))
            last = self._last.get(key, -1)
            writer = None
            for t in range(len(r.steps)):
                step = int(r.steps[t])
                if step <= last:
                    continue
                if writer is None:
                    writer = self._writer(key, r.label)
                for column, value in r.row(t).items():
                    if column in _NOT_SCALARS or value is None:
                        continue
                    v = float(value)
                    if math.isfinite(v):
                        writer.add_scalar(column, v, global_step=step)
                last = step
            self._last[key] = last
            if writer is not None:
                writer.flush()

    def _writer(self, key: tuple[int, str], label: str) -> Any:
        if key not in self._writers:
            self._writers[key] = self._writer_class(log_dir=str(self.logdir / _folder_name(key[0], label, key[1])))
        return self._writers[key]

    def close(self) -> None:
        """Flush and close every event file."""
        for w in self._writers.values():
            w.close()
        self._writers.clear()
