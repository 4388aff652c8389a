"""Streaming samples from tar shards with exact, resumable positions.

Each DataLoader worker reads an endless sequence of epochs. In epoch ``e`` the
shard list is shuffled with ``(seed, e)`` and split by rank, then by worker
(``split_by_node`` + ``split_by_worker``); in resampled mode each worker draws
its shards with replacement instead. Samples pass a seeded shuffle buffer,
then the modality's ``decode(sample, rng)`` with a per-sample generator, then
batching. Every batch carries ``(worker, epoch, samples consumed)``, so a
trainer that records the position of the batches it used can restart each
worker at that exact point: the skipped samples are read but never decoded.

A sample that cannot be decoded and a shard that cannot be read are skipped,
counted, and reported with their names; they never stop training.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tarfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_iterator

from mimx.config import UserError

Decoder = Callable[[dict[str, Any], np.random.Generator], dict[str, Any] | None]


@dataclass
class SkipLog:
    """Counts of skipped samples and unreadable shards, with the first few names and reasons."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    keep: int = 20
    repeats: int = 0  # skips of something already listed (a bad sample comes up again every epoch)

    def add(self, what: str) -> None:
        self.count += 1
        if what in self.examples:
            self.repeats += 1
        elif len(self.examples) < self.keep:
            self.examples.append(what)

    def extend(self, items: Sequence[str]) -> None:
        for item in items:
            self.add(item)

    def report(self) -> str:
        if not self.count:
            return "no corrupt samples or unreadable shards"
        again = f", {self.repeats} of them again in a later epoch" if self.repeats else ""
        lines = [f"skipped {self.count} corrupt sample(s) or unreadable shard(s){again}:"]
        lines += [f"  - {e}" for e in self.examples]
        if self.count - self.repeats > len(self.examples):
            lines.append(f"  ... and {self.count - self.repeats - len(self.examples)} more")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "examples": list(self.examples), "repeats": self.repeats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state.get("count", 0))
        self.examples = list(state.get("examples", []))
        self.repeats = int(state.get("repeats", 0))


def _origin(sample: dict[str, Any]) -> str:
    """`` (from <file>)``: a listed file's path, or the file a shard sample was written from (its json's)."""
    if sample.get("__file__"):
        return f" (from {sample['__file__']})"
    raw = sample.get("json")
    if not isinstance(raw, bytes | str) or len(raw) > 1 << 16:
        return ""
    try:
        meta = json.loads(raw)
    except ValueError:
        return ""
    if not isinstance(meta, dict):
        return ""
    parts = [str(meta[k]) for k in ("source", "file") if isinstance(meta.get(k), str) and meta[k]]
    return f" (from {'/'.join(parts)})" if parts else ""


def _short(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # args[0] is the errno
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        return f"{type(exc).__name__}: {text}"[:200]
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


def shuffle_buffer(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir shuffle with a buffer of ``size`` items (``size <= 1`` keeps the order)."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = rng.randrange(size)
        yield buf[k]
        buf[k] = item
    rng.shuffle(buf)
    yield from buf


class TailCheckedStream:
    """Read-only stream wrapper that can tell a complete tar from a truncated one.

    Python's ``tarfile`` ends a streamed archive silently when it is cut off;
    a complete archive ends with at least two zero blocks, so after the tar
    reader stops we read to the end and look at the last 1024 bytes.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.total = 0
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.total += len(data)
        self.tail = (self.tail + data)[-1024:]
        return data

    def ended_cleanly(self) -> bool:
        while self.read(1 << 16):
            pass
        return len(self.tail) == 1024 and not any(self.tail)

    def close(self) -> None:
        self.raw.close()


class ShardStream(IterableDataset):
    """Endless, resumable stream of decoded batches from tar shards (see module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        decode: Decoder,
        *,
        batch_size: int,
        shuffle: int = 1000,
        resampled: bool = False,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        collate: Callable[[list[Any]], Any] = default_collate,
        epochs: int | None = None,
    ) -> None:
        super().__init__()
        if not urls:
            raise UserError("no shards to read")
        self.urls = list(urls)
        self.decode = decode
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.resampled = resampled
        self.seed = seed
        self.rank = rank
        self.world = world
        self.collate = collate
        self.epochs = epochs  # None: endless; else stop after that many epochs (last batch may be short)
        self.start: dict[int, tuple[int, int]] = {}
        self.worker_offset = 0  # DataLoader worker i plays logical worker (i + offset) % num_workers

    def units(self) -> int | None:
        """How many readers the data can feed, one shard (or sample) each at least; None: any number."""
        return None if self.resampled else len(self.urls)

    def check_split(self) -> None:
        """Every rank needs one of the :meth:`units` (workers are fitted by :meth:`fit_workers`)."""
        units = self.units()
        if units is not None and units < self.world:
            raise UserError(self.too_few(units))

    def too_few(self, units: int) -> str:
        """The error when ``units`` cannot give each rank one."""
        return (f"data.shards has {units} shard(s) but {self.world} rank(s) each need at least one: write smaller "
                "shards (shards --max-size), or set data.resampled=true")

    def fit_workers(self, num_workers: int) -> int:
        """``num_workers``, lowered (with a note) so that every worker of every rank has a shard to read."""
        units = self.units()
        if units is None or num_workers <= 1 or units >= self.world * num_workers:
            return num_workers
        fitted = max(1, units // self.world)
        if self.rank == 0:
            print(f"[mimx] data: {units} shard(s) for {self.world} rank(s): {fitted} data worker(s) per rank instead "
                  f"of {num_workers} (smaller shards, shards --max-size, let more workers decode)", file=sys.stderr)
        return fitted

    def epoch_urls(self, epoch: int, worker: int, num_workers: int) -> list[str]:
        """Shards read by ``worker`` of this rank in ``epoch``."""
        if self.resampled:
            rng = random.Random(f"{self.seed}-{epoch}-{self.rank}-{worker}")
            count = max(1, math.ceil(len(self.urls) / (self.world * num_workers)))
            return [rng.choice(self.urls) for _ in range(count)]
        order = list(self.urls)
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order[self.rank :: self.world][worker::num_workers]

    def epoch_source(self, epoch: int, worker: int, num_workers: int, skips: list[str]) -> Iterator[dict[str, Any]]:
        """Raw (undecoded) samples this worker reads in ``epoch``, before the shuffle buffer."""
        return self._raw(self.epoch_urls(epoch, worker, num_workers), skips)

    def _raw(self, urls: list[str], skips: list[str]) -> Iterator[dict[str, Any]]:
        for url in urls:
            try:
                stream = TailCheckedStream(gopen(url))
            except Exception as exc:  # missing or unreachable shard: counted, never fatal
                skips.append(f"shard {url}: {_short(exc)}")
                continue

            truncated = (f"shard {url}: truncated (no end-of-archive marker); the samples before the cut were "
                         "used")
            cut = [False]

            def handler(exc: BaseException, url: str = url, cut: list[bool] = cut) -> bool:
                if isinstance(exc, tarfile.ReadError | EOFError):  # the tar reader ran into the cut
                    cut[0] = True
                else:
                    skips.append(f"shard {url}: {_short(exc)}")
                return True

            def files(url: str = url, stream: TailCheckedStream = stream,
                      cut: list[bool] = cut) -> Iterator[dict[str, Any]]:
                read = 0
                try:
                    for f in tar_file_iterator(stream, handler=handler):
                        read += 1
                        yield {**f, "__url__": url}
                except (tarfile.ReadError, EOFError) as exc:  # the next header lies past the cut: end here,
                    if not read and "unexpected end" not in str(exc):  # so the sample group_by_keys holds is
                        raise                                             # still yielded (garbage: not a tar)
                    cut[0] = True

            try:
                yield from group_by_keys(files(), handler=handler)
                if cut[0] or not stream.ended_cleanly():
                    skips.append(truncated)
            except Exception as exc:
                skips.append(f"shard {url}: {_short(exc)}")
            finally:
                stream.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self.worker_offset) % num_workers
        epoch, skip = self.start.get(worker, (0, 0))
        pending: list[str] = []
        batch: list[Any] = []
        while self.epochs is None or epoch < self.epochs:
            source = self.epoch_source(epoch, worker, num_workers, pending)
            rng = random.Random(f"{self.seed}-{self.rank}-{worker}-{epoch}")
            consumed = decoded = 0
            for sample in shuffle_buffer(source, self.shuffle, rng):
                consumed += 1
                if consumed <= skip:
                    continue
                sample_rng = np.random.default_rng([self.seed, self.rank, worker, epoch, consumed])
                try:
                    item = self.decode(sample, sample_rng)
                except Exception as exc:  # a corrupt sample never stops the stream
                    pending.append(f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}{_origin(sample)}: "
                                   f"{_short(exc)}")
                    continue
                if item is None:
                    continue
                decoded += 1
                batch.append(item)
                if len(batch) == self.batch_size:
                    out = self.collate(batch)
                    out["_pos"] = (worker, epoch, consumed)
                    out["_skips"] = list(pending)
                    pending.clear()  # the same list keeps collecting shard errors from _raw
                    yield out
                    batch = []
            if decoded == 0 and consumed > skip and self.epochs is None:
                raise UserError(f"rank {self.rank} worker {worker}: none of the {consumed - skip} samples of "
                                f"epoch {epoch} could be decoded, e.g. {pending[:3]}")
            if consumed == 0 and self.epochs is None:
                raise UserError(f"rank {self.rank} worker {worker}: no sample could be read from "
                                f"{self.epoch_urls(epoch, worker, num_workers)[:3]}: "
                                f"{pending[:3] or 'the shards are empty'}")
            epoch, skip = epoch + 1, 0
        if batch or pending:  # finite streams end with the short last batch (and any last skip reports)
            out = self.collate(batch) if batch else {}
            out["_pos"] = (worker, epoch, 0)
            out["_skips"] = list(pending)
            yield out


class MemoryStream(ShardStream):
    """A :class:`ShardStream` over raw samples already in memory (a small subset read once).

    Rank ``r`` of ``R`` keeps samples ``r, r + R, ...`` and its worker ``w`` of ``n`` every ``n``-th of
    those, from the ``w``-th on; the shuffle buffer,
    per-sample random streams, batching and positions work as for shards.
    """

    def __init__(self, samples: Sequence[dict[str, Any]], decode: Decoder, **kwargs: Any) -> None:
        super().__init__(["<memory>"], decode, **kwargs)
        self.samples = list(samples)

    def units(self) -> int | None:
        return len(self.samples)

    def too_few(self, units: int) -> str:
        return f"{units} sample(s) in memory for {self.world} processes; each needs one"

    def epoch_source(self, epoch: int, worker: int, num_workers: int, skips: list[str]) -> Iterator[dict[str, Any]]:
        return iter(self.samples[self.rank :: self.world][worker::num_workers])


def read_file_list(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """``(file, label)`` per line of a Kinetics/SSv2-style list: ``path label`` (space or comma separated).

    Relative paths are resolved against the list's folder; a line with only a path is unlabelled
    (-1); blank lines, ``#`` comments and a ``path,label`` header are ignored.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the file list {path}: {exc}") from None
    items: list[tuple[Path, int]] = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.rsplit("," if "," in line else None, 1)]
        if len(fields) == 2 and not items and fields[1].lower() == "label":
            continue  # header
        if len(fields) == 2 and not fields[1].lstrip("-").isdigit():
            raise UserError(f"{path} line {number}: expected 'path label' with an integer label, got {line!r}")
        file = Path(fields[0]).expanduser()
        items.append((file if file.is_absolute() else path.parent / file, int(fields[1]) if len(fields) == 2 else -1))
    if not items:
        raise UserError(f"the file list {path} names no files")
    return items


def _list_path(file: Path, folder: Path) -> str:
    """``file`` relative to ``folder`` when inside it (and not read as a ``#`` comment), else absolute."""
    try:
        relative = file.resolve().relative_to(folder).as_posix()
    except ValueError:
        return str(file.resolve())
    return str(file.resolve()) if relative.startswith("#") else relative


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_file_list(path: str | os.PathLike, items: Sequence[tuple[Path, int]]) -> None:
    """A list :func:`read_file_list` reads: header ``path,label``, then ``path,label`` lines (-1 unlabelled).

    Paths inside the list's folder are written relative to it (the folder moves as a whole), others
    absolute (resolved: a ``../`` path would point elsewhere when the folder is reached through a link).
    """
    path = Path(path)
    folder = path.parent.resolve()
    _write_atomic(path, "path,label\n" + "".join(f"{_list_path(f, folder)},{label}\n" for f, label in items))


def write_classes(folder: str | os.PathLike, classes: Sequence[str]) -> None:
    """``folder/classes.json``: the class names in label order, as the shard writers write it."""
    _write_atomic(Path(folder) / "classes.json", json.dumps(list(classes), indent=1))


class FileListStream(ShardStream):
    """A :class:`ShardStream` over local files named in a list (see :func:`read_file_list`).

    Each epoch the lines are shuffled with ``(seed, epoch)`` and split by rank, then by worker
    (resampled: each worker draws its share with replacement). A raw sample is
    ``{"__key__": stem, "__url__": list path, <suffix>: file bytes, "cls": label}``; a file that
    cannot be read is a counted skip.
    """

    def __init__(self, list_path: str | os.PathLike, decode: Decoder, **kwargs: Any) -> None:
        super().__init__([str(list_path)], decode, **kwargs)
        self.list_path = str(list_path)
        self.items = read_file_list(list_path)

    def units(self) -> int | None:
        return None if self.resampled else len(self.items)

    def too_few(self, units: int) -> str:
        return (f"{self.list_path} names {units} file(s) for {self.world} rank(s); each needs one: set "
                "data.resampled=true")

    def epoch_items(self, epoch: int, worker: int, num_workers: int) -> list[tuple[Path, int]]:
        """Files read by ``worker`` of this rank in ``epoch``."""
        if self.resampled:
            rng = random.Random(f"{self.seed}-{epoch}-{self.rank}-{worker}")
            count = max(1, math.ceil(len(self.items) / (self.world * num_workers)))
            return [rng.choice(self.items) for _ in range(count)]
        order = list(self.items)
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order[self.rank :: self.world][worker::num_workers]

    def epoch_source(self, epoch: int, worker: int, num_workers: int, skips: list[str]) -> Iterator[dict[str, Any]]:
        for file, label in self.epoch_items(epoch, worker, num_workers):
            try:
                data = file.read_bytes()
            except OSError as exc:  # missing or unreadable file: counted, never fatal
                skips.append(f"{self.list_path}: {file}: {_short(exc)}")
                continue
            sample: dict[str, Any] = {"__key__": file.stem, "__url__": self.list_path, "__file__": str(file),
                                      file.suffix.lstrip(".").lower(): data}
            if label >= 0:
                sample["cls"] = str(label).encode()
            yield sample


def read_raw(urls: Sequence[str], keep: Callable[[str], bool], *, max_bytes: int | None = None,
             skips: SkipLog | None = None) -> list[dict[str, Any]] | None:
    """The undecoded samples of ``urls`` whose key ``keep`` accepts, in file order.

    Returns None as soon as they exceed ``max_bytes`` (the caller then streams instead).
    """
    errors: list[str] = []
    found, size = [], 0
    for sample in ShardStream(list(urls), _identity, batch_size=1)._raw(list(urls), errors):
        if keep(sample["__key__"]):
            found.append(sample)
            size += sum(len(v) for v in sample.values() if isinstance(v, bytes))
            if max_bytes is not None and size > max_bytes:
                return None
    if skips is not None:
        skips.extend(errors)
    return found


def _identity(sample: dict[str, Any], rng: Any) -> dict[str, Any]:
    return sample


class StreamLoader:
    """A DataLoader over a :class:`ShardStream` that remembers where the consumed batches came from.

    ``state_dict()`` after a batch was used, ``load_state_dict()`` before
    iterating: the next batch is then exactly the one that would have followed.
    """

    def __init__(self, stream: ShardStream, *, num_workers: int = 2, pin_memory: bool = False,
                 prefetch_factor: int = 4, timeout: float = 0) -> None:
        stream.check_split()
        num_workers = stream.fit_workers(num_workers)
        self.stream = stream
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.timeout = timeout  # seconds without a batch from the workers before it stops with a message; 0: wait
        self.positions: dict[int, tuple[int, int]] = {}
        self.batches = 0
        self.skips = SkipLog()

    def state_dict(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "world": self.stream.world, "batches": self.batches,
                "positions": {int(w): list(p) for w, p in self.positions.items()},
                "skips": self.skips.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        positions = {int(w): (int(p[0]), int(p[1])) for w, p in state.get("positions", {}).items()}
        self.skips.load_state_dict(state.get("skips", {}))
        if state.get("num_workers") != self.num_workers or state.get("world") != self.stream.world:
            epoch = min((p[0] for p in positions.values()), default=0)
            warnings.warn(
                f"data loader layout changed (workers {state.get('num_workers')} -> {self.num_workers}, ranks "
                f"{state.get('world')} -> {self.stream.world}): the data order cannot be replayed exactly; "
                f"resuming every worker at the start of epoch {epoch}", stacklevel=2)
            positions = {w: (epoch, 0) for w in range(max(1, self.num_workers))}
        else:
            self.batches = int(state.get("batches", 0))
        self.positions = dict(positions)
        self.stream.start = dict(positions)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # the DataLoader serves its workers round-robin from worker 0: rotate so the worker
        # whose batch is due next comes first
        self.stream.worker_offset = self.batches % max(1, self.num_workers)
        loader = DataLoader(
            self.stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            persistent_workers=False, timeout=self.timeout if self.num_workers else 0,
            # the workers' base seed comes from the stream's seed, not from the global generator: starting an
            # iterator must not shift the training's random stream (drop-path), or a resumed run would differ
            generator=torch.Generator().manual_seed(self.stream.seed * 7919 + self.stream.rank),
        )
        for batch in self._guarded(loader):
            worker, epoch, consumed = batch.pop("_pos")
            self.skips.extend(batch.pop("_skips"))
            self.positions[int(worker)] = (int(epoch), int(consumed))
            if not batch:  # a finite stream's final report with no samples left
                continue
            self.batches += 1
            yield batch

    def _guarded(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        """The loader's batches; a worker that delivers nothing for ``timeout`` seconds stops the run clearly."""
        it = iter(loader)
        while True:
            try:
                yield next(it)
            except StopIteration:
                return
            except RuntimeError as exc:
                if not str(exc).startswith("DataLoader timed out"):
                    raise
                raise UserError(
                    f"no batch from the {self.num_workers} data worker(s) in {self.timeout:g} s, after "
                    f"{self.batches} batches: a decoder is stuck on a sample (decord is known to hang on some "
                    "videos). Nothing written is damaged: run again to continue from the last checkpoint. If it "
                    "stops at the same place, switch decoder (data.backend=pyav) or re-encode the videos "
                    "(mimx video shards --keyint); a slow but working source needs a longer train.data_timeout"
                ) from None


def first_batch(stream: ShardStream, key: str, what: str) -> dict[str, Any]:
    """The first batch holding ``key`` of one unshuffled pass over ``stream`` (figures, quick looks)."""
    stream.shuffle, stream.epochs = 0, 1
    skips: list[str] = []
    for batch in stream:
        skips += batch.get("_skips", [])
        if key in batch:
            return {k: v for k, v in batch.items() if not k.startswith("_")}
    reasons = f": {len(skips)} skipped, e.g. " + " | ".join(skips[:3]) if skips else ""
    raise UserError(f"no readable {what} in {list(stream.urls)[:3]}{reasons}")
