"""Shard lists (paths, brace patterns, globs, folders, ``pipe:`` URLs) and an atomic shard writer."""

from __future__ import annotations

import glob
import io
import json
import os
import sys
import tarfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import braceexpand

from mimx.config import UserError

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://", "ais://")


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


def expand_shards(spec: str | Sequence[str], *, check: bool = True, key: str = "data.shards") -> list[str]:
    """Expand a shard spec into a list of URLs.

    Accepts a list, or a string of ``::``-separated parts, each a brace pattern
    (``data/train-{000000..000099}.tar``), a glob (``data/*.tar``), a folder
    (all ``*.tar`` in it) or a URL (``pipe:curl -s https://.../x.tar``). With
    ``check``, missing local shards raise one error naming them and the config ``key`` to fix.
    """
    parts = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for part in parts:
        for piece in str(part).split("::"):
            piece = os.path.expandvars(os.path.expanduser(piece.strip()))
            if not piece:
                continue
            if piece == "???":  # OmegaConf's missing value reaching here from a config built in code
                raise UserError(f"{key} is not set (???): give {key}=PATH to your shards")
            for url in braceexpand.braceexpand(piece):
                if is_remote(url):
                    urls.append(url)
                elif os.path.isdir(url):
                    found = sorted(glob.glob(os.path.join(url, "*.tar")))
                    if check and not found:
                        raise UserError(f"folder {url} holds no .tar shards; write some with `mimx <modality> "
                                        f"shards SRC OUT` or point {key} at your shards")
                    urls.extend(found)
                elif any(ch in url for ch in "*?["):
                    found = sorted(glob.glob(url))
                    if check and not found:
                        raise UserError(f"no shards match {url}; check the path in {key}")
                    urls.extend(found)
                else:
                    urls.append(url)
    if check:
        if not urls:
            raise UserError(f"{key} {spec!r} names no shards")
        missing = [u for u in urls if not is_remote(u) and not os.path.isfile(u)]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            hint = ("; build the embedded samples with `python -m mimx.datasets.samples data/samples` (or `make "
                    "samples`) in the folder you run from" if any("samples" in m for m in missing) else "")
            raise UserError(f"{len(missing)} of {len(urls)} shards not found: {', '.join(missing[:3])}{more}; "
                            f"fix {key} (brace patterns like train-{{000000..000009}}.tar work){hint}")
    return urls


def parse_size(text: str | int) -> int:
    """``"256MB"``, ``"1.5GB"``, ``"500k"`` or a byte count."""
    if isinstance(text, int):
        return text
    units = {"": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
    t = text.strip().lower()
    number = t.rstrip("kmgb")
    unit = t[len(number):]
    if unit not in units:
        raise UserError(f"cannot read size {text!r}; write e.g. 256MB or 1GB")
    return int(float(number) * units[unit])


def list_files(src: Path, suffixes: Collection[str], what: str = "files",
               classes: Sequence[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """Files of ``src`` whose lower-case suffix is in ``suffixes``, with their class index.

    Classes are the sorted names of the subfolders (searched recursively), or ``classes`` (another split's
    order, so the same name gets the same id; every subfolder must be among them); files directly in
    ``src`` get -1 (unlabelled). Returns ``(items, class names)``.
    """
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; give a folder of {what} or of class subfolders, or a .csv/.txt "
                        "list of 'path label' lines")
    folders = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = class_order(folders, classes, src)
    items: list[tuple[Path, int]] = []
    for name in folders:
        index = classes.index(name)
        items += [(f, index) for f in sorted((src / name).rglob("*")) if f.suffix.lower() in suffixes]
    items += [(f, -1) for f in sorted(src.iterdir()) if f.is_file() and f.suffix.lower() in suffixes]
    if not items:
        raise UserError(f"no {what} ({', '.join(sorted(suffixes))}) found in {src}")
    return items, classes


def class_order(folders: Sequence[str], given: Sequence[str] | None, src: Path) -> list[str]:
    """The class names that number ``src``'s class ``folders``: ``given`` (another split's, every folder among
    them) or the folders themselves, sorted."""
    if given is None:
        return sorted(folders)
    unknown = [name for name in folders if name not in given]
    if unknown:
        raise UserError(f"class folder(s) {unknown[:5]} of {src} are not in the given class list "
                        f"({len(given)} names); add them there or leave them out")
    return list(given)


def sample_key(name: str) -> tuple[str, str]:
    """Split a tar member name into (sample key, extension) the way webdataset groups files."""
    directory, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return os.path.join(directory, stem), ext


def count_samples(url: str) -> int:
    """Samples in one local shard, from the tar headers only (no data is read).

    A shard cut short counts the samples with a member whole before the cut (what the stream yields; it
    reports the cut); one that is no tar at all raises ``tarfile.TarError``.
    """
    keys: set[str] = set()
    size = os.path.getsize(url) if url.endswith(".tar") else None  # offsets of a compressed tar are not sizes
    with tarfile.open(url, "r:*") as tar:
        try:
            for member in tar:
                whole = size is None or member.offset_data + member.size <= size
                if member.isreg() and whole and not os.path.basename(member.name).startswith("__"):
                    keys.add(sample_key(member.name)[0])
        except (tarfile.ReadError, EOFError):  # opened as a tar, so cut short (garbage fails in tarfile.open)
            print(f"[mimx] data: shard {url} is truncated; counting the {len(keys)} sample(s) before the cut",
                  file=sys.stderr)
    return len(keys)


def dataset_size(urls: Sequence[str]) -> int:
    """Total samples of local shards; reads ``<shard>.json`` sidecars where the writer left them."""
    total = 0
    for url in urls:
        if is_remote(url):
            raise UserError(f"cannot count samples in remote shard {url}; set data.num_samples")
        sidecar = Path(url).with_suffix(".json")
        if sidecar.exists():
            try:
                total += int(json.loads(sidecar.read_text())["count"])
                continue
            except (ValueError, KeyError):
                pass
        try:
            total += count_samples(url)
        except (tarfile.TarError, OSError) as exc:
            raise UserError(f"shard {url} cannot be read ({exc}); it is damaged or not a tar file. "
                            "Rewrite it or drop it from data.shards") from None
    return total


class ShardWriter:
    """Writes samples into ``<prefix>-000000.tar, ...`` shards of about ``max_bytes`` each.

    Each shard is written to a temporary name and renamed when complete, so a
    crash never leaves a truncated shard under a final name; existing shards
    are never overwritten unless ``overwrite``. A ``.json`` sidecar records the
    sample count. Samples are dicts ``{"__key__": str, "<ext>": bytes | str | dict}``.
    """

    def __init__(self, prefix: str | os.PathLike, *, max_bytes: int = 256 * 2**20, max_count: int = 100_000,
                 overwrite: bool = False) -> None:
        self.prefix = str(prefix)
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.overwrite = overwrite
        self.shards: list[str] = []
        self.total = 0
        self._tar: tarfile.TarFile | None = None
        self._tmp = ""
        self._count = 0
        self._bytes = 0
        self._keys: set[str] = set()
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        if not overwrite:
            existing = sorted(glob.glob(glob.escape(self.prefix) + "-[0-9]*.tar"))
            if existing:
                raise UserError(f"{existing[0]} already exists; write to another folder or pass --overwrite")

    def _name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def _open(self) -> None:
        final = self._name(len(self.shards))
        self._tmp = final + ".tmp"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed in _close)
        self._count = 0
        self._bytes = 0
        self._keys = set()

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        final = self._name(len(self.shards))
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, final)
        Path(final).with_suffix(".json").write_text(json.dumps({"count": self._count}))
        self.shards.append(final)
        self._tar = None

    def write(self, sample: dict[str, Any]) -> None:
        key = sample.get("__key__")
        if not key or "." in key.rsplit("/", 1)[-1]:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no '.'")
        if self._tar is not None and (self._count >= self.max_count or self._bytes >= self.max_bytes):
            self._close()
        if self._tar is None:
            self._open()
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in shard {self._name(len(self.shards))}")
        self._keys.add(key)
        for ext, value in sample.items():
            if ext.startswith("__"):
                continue
            data = _to_bytes(value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data) + 512
        self._count += 1
        self.total += 1

    def write_all(self, samples: Iterable[dict[str, Any]]) -> None:
        for sample in samples:
            self.write(sample)

    def close(self) -> list[str]:
        self._close()
        if self.overwrite:  # drop stale shards of an earlier, longer write with this prefix
            for stale in glob.glob(glob.escape(self.prefix) + "-[0-9]*.tar"):
                if stale not in self.shards:
                    Path(stale).unlink()
                    Path(stale).with_suffix(".json").unlink(missing_ok=True)
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its temporary file), keeping finished shards."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode()
    raise TypeError(f"cannot store {type(value).__name__} in a shard; encode it to bytes first")


def write_dataset(out: Path, prefix: str, samples: Iterable[dict[str, Any]], classes: Sequence[str], *,
                  max_size: str | int, max_count: int, overwrite: bool, skipped: list[str],
                  what: str) -> dict[str, Any]:
    """Write ``samples`` as ``out/<prefix>-NNNNNN.tar`` (atomic shards) plus ``classes.json``.

    Returns ``{"shards", "samples", "classes", "skipped"}``; ``skipped`` is the list the
    sample generator fills with ``"file: reason"``. Raises one error when nothing was written.
    """
    labels: set[str] = set()

    def counted() -> Iterator[dict[str, Any]]:  # the labels written, for lists without class names
        for sample in samples:
            label = sample.get("cls")
            labels.add(label.decode() if isinstance(label, bytes) else str(label))
            yield sample

    with ShardWriter(out / prefix, max_bytes=parse_size(max_size), max_count=max_count,
                     overwrite=overwrite) as writer:
        writer.write_all(counted())
    if writer.total == 0:
        raise UserError(f"none of the {what} could be read: {skipped[:3]}")
    if classes:
        (out / "classes.json").write_text(json.dumps(list(classes), indent=1))
    count = len(classes) or len(labels - {"None", "-1"})
    return {"shards": writer.shards, "samples": writer.total, "classes": count, "skipped": skipped}


def list_classes(path: Path, items: Sequence[tuple[Path, int]]) -> list[str]:
    """Class names of a file list from the ``classes.json`` beside it (a JSON list of names in label
    order, as ``mimx.datasets.video_lists`` writes it); [] when there is none."""
    if not path.is_file():
        return []
    classes = read_class_names(path)
    top = max(label for _, label in items)
    if top >= len(classes):
        raise UserError(f"{path} names {len(classes)} classes but the list beside it has label {top}; "
                        "it belongs to other data: fix or remove it")
    return classes


def list_sources(src: Path, suffixes: Collection[str], what: str = "files",
                 classes_file: str | Path | None = None) -> tuple[list[tuple[Path, int]], list[str], Path]:
    """(files with labels, class names, folder the source names are relative to) of a folder or a list.

    A folder: its files (class subfolders give labels, see :func:`list_files`); a ``.csv``/``.txt``
    file: a ``path label`` list, its class names from a ``classes.json`` beside it (see :func:`list_classes`).
    ``classes_file``: a ``classes.json`` (e.g. the training shards') that fixes the class ids instead.
    """
    from mimx.data.stream import read_file_list

    if src.is_file() and src.suffix.lower() in (".csv", ".txt"):
        items = read_file_list(src)
        return items, list_classes(Path(classes_file or src.parent / "classes.json"), items), src.parent
    if src.is_file():
        raise UserError(f"{src} is neither a folder nor a .csv/.txt file list")
    given = read_class_names(Path(classes_file)) if classes_file else None
    items, classes = list_files(src, suffixes, what, given)
    return items, classes, src


def read_class_names(path: Path) -> list[str]:
    """The class names of a ``classes.json`` (a JSON list of strings); one clear error otherwise."""
    try:
        names = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}); expected a JSON list of class names") from None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise UserError(f"{path} is not a JSON list of class names; fix or remove it")
    twice = sorted({c for c in names if names.count(c) > 1}) if len(set(names)) < len(names) else []
    if twice:
        raise UserError(f"{path} names class(es) {', '.join(map(repr, twice[:5]))} more than once, so a class id "
                        "would not say which class it is; give each class one entry")
    return names


def print_summary(summary: dict[str, Any], out: str | Path, what: str) -> None:
    """The closing lines of a ``shards`` command: what was written, then every skipped source (first 20)."""
    classes = summary["classes"]
    print(f"wrote {summary['samples']} {what} ({classes} class{'es' if classes != 1 else ''}) into "
          f"{len(summary['shards'])} shard(s) in {out}")
    skipped = summary["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} unusable source(s):", file=sys.stderr)
        for line in skipped[:20]:
            print(f"  - {line}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more", file=sys.stderr)


def find_member(sample: dict[str, Any], keys: Sequence[str], what: str) -> tuple[str, bytes]:
    """``(key, bytes)`` of the first of ``keys`` a raw sample holds; KeyError naming what it has otherwise."""
    for key in keys:
        if key in sample:
            return key, sample[key]
    found = sorted(k for k in sample if not k.startswith("__"))
    raise KeyError(f"no {what} in sample (has {found}; expected one of {', '.join(keys)})")


def add_shard_arguments(parser: Any, src_help: str, prefix: str) -> None:
    """The arguments every ``shards`` command shares: SRC, OUT, --prefix, --max-size, --max-count,
    --no-shuffle, --seed, --overwrite."""
    parser.add_argument("src", help=src_help)
    parser.add_argument("out", help="output folder for <prefix>-NNNNNN.tar shards")
    parser.add_argument("--prefix", default=prefix)
    parser.add_argument("--max-size", default="256MB", help="target shard size (default 256MB)")
    parser.add_argument("--max-count", type=int, default=100_000, help="most samples per shard")
    parser.add_argument("--no-shuffle", action="store_true", help="keep source order (default: shuffled)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards with this prefix")
    parser.add_argument("--classes", help="a classes.json fixing the class ids (e.g. the training shards', when "
                                          "writing the test split) instead of this source's sorted subfolders")
