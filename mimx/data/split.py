"""Deterministic splits of a sample stream by a stable hash of each sample key.

A validation split carved from the training shards (and a labelled subset of
the rest, for few-label experiments) needs no extra files: membership depends
only on the key, the fraction and a seed, so every process and every run agree.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from webdataset.tariterators import tarfile_samples

from mimx.data.shards import is_remote, sample_key

PARTS = ("train", "val", "all")


def in_fraction(key: str, fraction: float, salt: str) -> bool:
    """True for about ``fraction`` of all keys, always the same ones for the same ``salt``."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    return zlib.crc32(f"{salt}/{key}".encode()) / 2**32 < fraction


class SplitFilter:
    """Which part of a training set a sample key belongs to.

    ``val`` holds ``val_fraction`` of the keys; ``train`` the rest, thinned to
    ``label_fraction`` of them when fewer labels are wanted; ``all`` everything.
    """

    def __init__(self, part: str, val_fraction: float = 0.0, label_fraction: float = 1.0, seed: int = 0) -> None:
        if part not in PARTS:
            raise ValueError(f"split part must be one of {PARTS}, got {part!r}")
        self.part = part
        self.val_fraction = val_fraction
        self.label_fraction = label_fraction
        self.seed = seed

    def __call__(self, key: str) -> bool:
        if self.part == "all":
            return True
        is_val = in_fraction(key, self.val_fraction, f"val-{self.seed}")
        if self.part == "val":
            return is_val
        return not is_val and in_fraction(key, self.label_fraction, f"labels-{self.seed}")


class KeyShare:
    """The keys process ``rank`` of ``world`` scores when several share a one-pass part: a stable hash of
    the key, so the shares are disjoint, cover every key and need no coordination."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank = rank
        self.world = world

    def __call__(self, key: str) -> bool:
        return zlib.crc32(f"share/{key}".encode()) % self.world == self.rank


class FilteredDecoder:
    """A stream decoder that drops, before decoding, the samples ``keep(key)`` rejects."""

    def __init__(self, decoder: Callable[[dict[str, Any], np.random.Generator], Any],
                 keep: Callable[[str], bool]) -> None:
        self.decoder = decoder
        self.keep = keep

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> Any:
        if not self.keep(sample["__key__"]):
            return None
        return self.decoder(sample, rng)


def count_kept(urls: Sequence[str], keep: Callable[[str], bool]) -> int:
    """Samples of the shards that ``keep`` accepts (tar headers only for local shards)."""
    import tarfile

    total = 0
    for url in urls:
        if is_remote(url):
            total += sum(keep(s["__key__"]) for s in tarfile_samples([{"url": url}], handler=lambda e: True))
            continue
        keys = set()
        with tarfile.open(url, "r:*") as tar:
            for member in tar:
                if member.isreg():
                    keys.add(sample_key(member.name)[0])
        total += sum(keep(k) for k in keys)
    return total
