"""mimx file lists (``path,label`` lines) and ``classes.json`` from the video benchmarks' annotations.

- ``kinetics``: Kinetics-400/600/700 CSVs as released by DeepMind/CVDF (header
  ``label,youtube_id,time_start,time_end,split``; extra columns such as ``is_cc`` are ignored; the test
  CSV may lack ``label`` or leave it empty). The clip of a row is
  ``<youtube_id>_<time_start:06d>_<time_end:06d>.<mp4|webm|mkv|avi|mov>``, looked for in the video root
  itself, in ``<root>/<label>/``, ``<root>/<split>/`` (the CVDF tarballs) or ``<root>/<split>/<label>/``,
  where ``<label>`` may also be written with underscores for spaces (``playing_guitar``) or, as
  MMAction2's rename script leaves it, without ``(``, ``)`` and ``'`` too, and ``<split>`` is the row's
  ``split`` value or the split's usual names (``train``; ``val``, ``validate``, ``validation``; ``test``).
  Label = index of the label among the sorted unique labels of the train CSV (the usual Kinetics
  convention); a val/test row whose label is not a train class is skipped and listed, a row with an
  empty label is written unlabelled.
- ``ssv2``: Something-Something-v2's ``labels/`` folder: ``something-something-v2-labels.json``
  (template -> index string), ``-train.json`` and ``-validation.json`` (``[{"id", "template", ...}]``)
  and, if present, ``-test.json`` (ids only, written unlabelled). Videos are ``<root>/<id>.webm`` (or
  ``.mp4`` when re-encoded). Label = ``int(labels[template without "[" and "]"])``: the bracket
  characters are dropped and the words inside kept (``"Putting [something] on a surface"`` ->
  ``"Putting something on a surface"``), as PySlowFast's ``Ssv2`` dataset does (``slowfast/datasets/ssv2.py``;
  VideoMAE's DATASET.md leaves writing the ``path label`` lists to the user).

Each writes ``OUT/train.csv``, ``OUT/val.csv`` (and ``OUT/test.csv``) and ``OUT/classes.json`` (the class
names in label order, as the shard writers write it). A row whose video is not on disk (the downloaders
always miss some YouTube clips) is skipped, counted and listed. Lines are ``path,label`` (comma: Kinetics
folders have spaces), ``-1`` for unlabelled, the format ``read_file_list`` reads for ``data.list=`` and
``mimx video shards``, which takes the ``classes.json`` beside the list into the shards' folder. A video
inside ``OUT`` is written relative to it, as ``read_file_list`` resolves relative paths against the list's
folder (the folder then moves as a whole); any other is written absolute (resolved: a ``../`` path would
point elsewhere when ``OUT`` is reached through a symbolic link).

    python -m mimx.datasets.video_lists kinetics train.csv validate.csv /data/k400 OUT --test test.csv
    python -m mimx.datasets.video_lists ssv2 labels/ 20bn-something-something-v2/ OUT
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mimx.config import UserError
from mimx.data.stream import write_classes, write_file_list

# the containers mimx reads (mimx.modalities.video.io.VIDEO_EXTS), in order of preference when a clip has several
EXTS = ("mp4", "webm", "mkv", "avi", "mov")
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "validate", "validation", "valid"),
               "test": ("test", "testing")}
KINETICS_COLUMNS = ("youtube_id", "time_start", "time_end")
KINETICS_LAYOUT = ("<youtube_id>_<time_start:06d>_<time_end:06d>.mp4 (webm, mkv, avi) in the video root, "
                   "<label>/, <split>/ or <split>/<label>/")
SSV2_PREFIX = "something-something-v2-"
SHOWN = 10  # missing / skipped rows printed per split


def label_folders(label: str) -> list[str]:
    """The folder names downloaders give a Kinetics label: as is, spaces -> ``_``, and also without ``()'``."""
    underscored = label.replace(" ", "_")
    names = [label, underscored, underscored.translate({ord(c): None for c in "()'"})]
    return list(dict.fromkeys(names))


def _video_index(root: Path, depth: int) -> dict[str, list[Path]]:
    """``stem -> files`` of the videos in ``root`` and its subfolders down to ``depth`` levels."""
    if not root.is_dir():
        raise UserError(f"video folder {root} does not exist")
    index: dict[str, list[Path]] = {}
    folders = [(root, 0)]
    while folders:
        folder, level = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise UserError(f"cannot list {folder}: {exc}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if level < depth:
                    folders.append((Path(entry.path), level + 1))
            elif "." in entry.name:
                stem, ext = entry.name.rsplit(".", 1)
                if ext.lower() in EXTS:
                    index.setdefault(stem, []).append(Path(entry.path))
    return index


def _pick(files: Iterable[Path], root: Path, folders: Sequence[tuple[str, ...]]) -> Path | None:
    """The first of ``files`` by preferred folder (relative to ``root``), then by extension; None if none."""
    rank = {folder: i for i, folder in enumerate(folders)}
    found = [(rank[f.parent.relative_to(root).parts], EXTS.index(f.suffix[1:].lower()), f) for f in files
             if f.parent.relative_to(root).parts in rank]
    return min(found)[2] if found else None


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise UserError(f"{path} does not exist; expected {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {path} as JSON ({exc}); expected {what}") from None


def _check_outputs(out: Path, names: Sequence[str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the lists")
    existing = [out / n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists; write to another folder or pass --overwrite")


def _finish(out: Path, splits: dict[str, tuple[list[tuple[Path, int]], dict[str, Any]]],
            classes: Sequence[str]) -> dict[str, Any]:
    """Write every split's list and ``classes.json``; refuses a split where no video was found."""
    for split, (items, report) in splits.items():
        layout = report.pop("layout")
        if not items:
            shown = ", ".join(report["missing"][:3])
            raise UserError(f"none of the {report['rows']} {split} videos of {report['source']} were found under "
                            f"{report['root']} (e.g. {shown}); expected {layout}")
    out.mkdir(parents=True, exist_ok=True)
    for split, (items, report) in splits.items():
        report["list"] = out / f"{split}.csv"
        write_file_list(report["list"], items)
    write_classes(out, classes)
    return {"splits": {split: report for split, (_, report) in splits.items()}, "classes": list(classes),
            "classes_file": out / "classes.json"}


def _read_kinetics_csv(path: Path, need_label: bool) -> list[dict[str, str]]:
    expected = "a Kinetics annotation csv with the header label,youtube_id,time_start,time_end,split"
    if not path.is_file():
        raise UserError(f"{path} does not exist; expected {expected}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [(name or "").strip().lower() for name in reader.fieldnames or []]
            needed = (("label",) if need_label else ()) + KINETICS_COLUMNS
            lacking = [c for c in needed if c not in header]
            if lacking:
                raise UserError(f"{path} has no column {', '.join(lacking)} (header: {','.join(header) or 'none'}); "
                                f"expected {expected}")
            reader.fieldnames = header
            rows = [{k: v.strip() if isinstance(v, str) else "" for k, v in row.items() if k is not None}
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path} ({exc}); expected {expected}") from None
    if not rows:
        raise UserError(f"{path} has a header but no rows")
    return rows


def _clip_name(row: dict[str, str], path: Path, line: int) -> str:
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except (ValueError, OverflowError):
        raise UserError(f"{path} line {line}: time_start {row['time_start']!r} and time_end {row['time_end']!r} "
                        "must be numbers (seconds)") from None
    if not row["youtube_id"]:
        raise UserError(f"{path} line {line}: empty youtube_id")
    return f"{row['youtube_id']}_{start:06d}_{end:06d}"


def _kinetics_split(path: Path, split: str, root: Path, index: dict[str, list[Path]], rows: list[dict[str, str]],
                    classes: dict[str, int]) -> tuple[list[tuple[Path, int]], dict[str, Any]]:
    items: list[tuple[Path, int]] = []
    missing: list[str] = []
    skipped: list[str] = []
    for line, row in enumerate(rows, 2):
        name = _clip_name(row, path, line)
        label_name = row.get("label", "")
        if label_name and label_name not in classes:
            skipped.append(f"{name} (line {line}): label {label_name!r} is not a class of the train csv")
            continue
        splits = list(dict.fromkeys(([row["split"]] if row.get("split") else []) + list(SPLIT_NAMES[split])))
        labels = label_folders(label_name) if label_name else []
        folders = ([(s, lab) for s in splits for lab in labels] + [(lab,) for lab in labels]
                   + [(s,) for s in splits] + [()])
        file = _pick(index.get(name, ()), root, folders)
        if file is None:
            missing.append(f"{name} ({label_name})" if label_name else name)
            continue
        items.append((file, classes[label_name] if label_name else -1))
    return items, {"source": path, "root": root, "rows": len(rows), "videos": len(items), "missing": missing,
                   "skipped": skipped, "layout": KINETICS_LAYOUT}


def kinetics_lists(train: str | Path, val: str | Path, videos: str | Path, out: str | Path, *,
                   test: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Kinetics annotation CSVs + video root -> ``out/{train,val[,test]}.csv`` + ``classes.json``.

    Returns ``{"splits": {split: {"list", "source", "root", "rows", "videos", "missing", "skipped"}},
    "classes", "classes_file"}``.
    """
    sources = {"train": Path(train), "val": Path(val), **({"test": Path(test)} if test is not None else {})}
    out, root = Path(out), Path(videos).resolve()
    _check_outputs(out, [f"{s}.csv" for s in sources] + ["classes.json"], overwrite)
    rows = {split: _read_kinetics_csv(path, need_label=split == "train") for split, path in sources.items()}
    names = sorted({row["label"] for row in rows["train"] if row["label"]})
    if not names:
        raise UserError(f"{sources['train']} has no labels; give the train csv of Kinetics as TRAIN")
    classes = {name: i for i, name in enumerate(names)}
    index = _video_index(root, depth=2)
    splits = {split: _kinetics_split(sources[split], split, root, index, rows[split], classes) for split in sources}
    return _finish(out, splits, names)


def _ssv2_labels(path: Path) -> list[str]:
    expected = 'a JSON object {"<template>": "<index>", ...}'
    labels = _read_json(path, expected)
    if not isinstance(labels, dict) or not labels:
        raise UserError(f"{path} is not {expected}")
    try:
        by_index = {int(index): name for name, index in labels.items()}
    except (TypeError, ValueError):
        raise UserError(f"{path}: every value must be a class index like \"0\"; expected {expected}") from None
    if sorted(by_index) != list(range(len(labels))):
        raise UserError(f"{path}: the {len(labels)} class indices are not 0..{len(labels) - 1} without repeats")
    return [by_index[i] for i in range(len(labels))]


def ssv2_template(template: str) -> str:
    """The labels.json key of an annotation's template: ``[`` and ``]`` dropped, the words inside kept."""
    return template.replace("[", "").replace("]", "")


def _ssv2_split(path: Path, root: Path, index: dict[str, list[Path]],
                classes: dict[str, int] | None) -> tuple[list[tuple[Path, int]], dict[str, Any]]:
    expected = ('a JSON list [{"id": "...", "template": "..."}, ...]' if classes is not None
                else 'a JSON list [{"id": "..."}, ...]')
    entries = _read_json(path, expected)
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path} is not {expected}")
    items: list[tuple[Path, int]] = []
    missing: list[str] = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or (classes is not None and "template" not in entry):
            raise UserError(f"{path} entry {number} is {str(entry)[:80]!r}; expected {expected}")
        video = str(entry["id"])
        label = -1
        if classes is not None:
            template = ssv2_template(str(entry["template"]))
            if template not in classes:
                raise UserError(f"{path} entry {number}: template {entry['template']!r} ({template!r} without "
                                "brackets) is not in the labels json; are the annotation files of one release?")
            label = classes[template]
        file = _pick(index.get(video, ()), root, [()])
        if file is None:
            missing.append(video)
            continue
        items.append((file, label))
    return items, {"source": path, "root": root, "rows": len(entries), "videos": len(items), "missing": missing,
                   "skipped": [], "layout": "<id>.webm (or .mp4) directly in the video folder"}


def ssv2_lists(labels: str | Path, videos: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Something-Something-v2 ``labels/`` folder + video folder -> ``out/{train,val[,test]}.csv`` + ``classes.json``.

    ``test.csv`` is written when ``something-something-v2-test.json`` is in ``labels``. Returns what
    :func:`kinetics_lists` returns.
    """
    labels, out, root = Path(labels), Path(out), Path(videos).resolve()
    if not labels.is_dir():
        raise UserError(f"{labels} is not a folder; give SSv2's labels/ folder ({SSV2_PREFIX}labels.json, "
                        f"{SSV2_PREFIX}train.json, {SSV2_PREFIX}validation.json)")
    files = {"train": labels / f"{SSV2_PREFIX}train.json", "val": labels / f"{SSV2_PREFIX}validation.json"}
    if (labels / f"{SSV2_PREFIX}test.json").is_file():
        files["test"] = labels / f"{SSV2_PREFIX}test.json"
    _check_outputs(out, [f"{s}.csv" for s in files] + ["classes.json"], overwrite)
    names = _ssv2_labels(labels / f"{SSV2_PREFIX}labels.json")
    classes = {name: i for i, name in enumerate(names)}
    index = _video_index(root, depth=0)
    splits = {split: _ssv2_split(path, root, index, None if split == "test" else classes)
              for split, path in files.items()}
    return _finish(out, splits, names)


def print_report(result: dict[str, Any]) -> None:
    """Per split: videos found of the rows, the list written, the first missing and skipped rows."""
    for split, report in result["splits"].items():
        print(f"{split}: {report['videos']} of {report['rows']} videos found -> {report['list']}")
        for what, lines in (("missing", report["missing"]), ("skipped", report["skipped"])):
            if lines:
                more = f", ... and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
                print(f"  {len(lines)} {what}: {', '.join(lines[:SHOWN])}{more}", file=sys.stderr)
    print(f"{len(result['classes'])} classes -> {result['classes_file']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimx.datasets.video_lists", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="layout", required=True)
    kinetics = sub.add_parser("kinetics", help="Kinetics-400/600/700 annotation CSVs")
    kinetics.add_argument("train", help="the train csv (its sorted labels are the classes)")
    kinetics.add_argument("val", help="the validation csv")
    kinetics.add_argument("videos", help="the video root (flat, <label>/, <split>/ or <split>/<label>/)")
    kinetics.add_argument("out", help="folder for train.csv, val.csv, test.csv and classes.json")
    kinetics.add_argument("--test", default=None, help="the test csv (labels optional)")
    ssv2 = sub.add_parser("ssv2", help="Something-Something-v2 label JSONs")
    ssv2.add_argument("labels", help=f"folder with {SSV2_PREFIX}labels.json, -train.json, -validation.json "
                                     "(-test.json optional)")
    ssv2.add_argument("videos", help="folder of <id>.webm videos")
    ssv2.add_argument("out", help="folder for train.csv, val.csv, test.csv and classes.json")
    for p in (kinetics, ssv2):
        p.add_argument("--overwrite", action="store_true", help="replace lists written before")
    args = parser.parse_args(argv)
    try:
        if args.layout == "kinetics":
            result = kinetics_lists(args.train, args.val, args.videos, args.out, test=args.test,
                                    overwrite=args.overwrite)
        else:
            result = ssv2_lists(args.labels, args.videos, args.out, overwrite=args.overwrite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
