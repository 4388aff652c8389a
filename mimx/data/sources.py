"""The first few decoded samples of files, folders or shards, for viewers and quick looks."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from webdataset.tariterators import tarfile_samples

from mimx.config import UserError
from mimx.data.shards import expand_shards, is_remote


def _raw_samples(source: str, suffixes: Collection[str], what: str) -> Iterator[tuple[dict[str, Any], str]]:
    path = Path(source)
    shard_like = is_remote(source) or source.endswith(".tar") or "{" in source or (
        path.is_dir() and any(path.glob("*.tar")))
    if shard_like:
        for url in expand_shards(source):
            for sample in tarfile_samples([{"url": url}], handler=lambda exc: True):
                yield sample, f"{url}:{sample['__key__']}"
        return
    if not path.exists():
        raise UserError(f"{source} does not exist; give {what} files, a folder of them or shards")
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in suffixes) if path.is_dir() else [path]
    for f in files:
        yield {"__key__": f.stem, f.suffix.lower().lstrip("."): f.read_bytes()}, str(f)


def first_decoded(sources: list[str], decode: Callable[[dict[str, Any], np.random.Generator], Any], count: int,
                  suffixes: Collection[str], what: str) -> tuple[list[Any], list[str]]:
    """Up to ``count`` decoded samples and their names, in the order given.

    A source is a file, a folder of files with one of ``suffixes``, or shards (a ``.tar``, a brace
    pattern, a folder of ``.tar`` files, a ``pipe:`` URL). A sample ``decode`` rejects is reported
    and skipped; none at all is one clear error.
    """
    items: list[Any] = []
    names: list[str] = []
    rng = np.random.default_rng(0)
    for source in sources:
        for sample, name in _raw_samples(source, suffixes, what):
            try:
                items.append(decode(sample, rng))
                names.append(name)
            except Exception as exc:  # an unreadable sample is reported, the others are still shown
                print(f"skipped {name}: {type(exc).__name__}: {exc}")
            if len(items) >= count:
                return items, names
    if not items:
        raise UserError(f"no readable {what} in {', '.join(sources)}")
    return items, names
