"""Metrics to CSV and TensorBoard (main process only)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends rows to ``metrics.csv`` (new columns extend the header) and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
            except ImportError:  # tensorboard is a dependency; an odd environment may still lack it
                self._tb = None

    def log(self, row: dict[str, Any], step: int) -> None:
        row = {"step": step, **row}
        fields = list(row)
        rows: list[dict[str, Any]] = []
        rewrite = not self.path.exists()
        if not rewrite:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                old = reader.fieldnames or []
                if set(fields) - set(old):
                    rows, rewrite = list(reader), True
                    fields = old + [k for k in fields if k not in old]
                else:
                    fields = old
        if rewrite:
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerow(row)
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))
