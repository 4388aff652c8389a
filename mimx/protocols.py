"""The modality-independent half of every ``eval`` action: data parts, features, kNN / linear probe, results.

Choices (linear probe: lr and epoch; fine-tune: epoch) are made on a
validation split carved from the training shards by key hash; the test shards
are scored once, at the end. Results go to ``<run.dir>/eval-<protocol>-<encoder>.json``
and a row of the run's ``metrics.csv``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mimx.config import UserError, from_mapping, to_plain
from mimx.data.shards import expand_shards, is_remote, read_class_names
from mimx.data.split import FilteredDecoder, KeyShare, SplitFilter, count_kept
from mimx.data.stream import Decoder, MemoryStream, ShardStream, SkipLog, StreamLoader, read_raw
from mimx.evaluation import accuracy, knn_predict, probe_predict, train_attentive_probe, train_linear_probe
from mimx.train.distributed import DistInfo, gather_objects, gather_to_main, init_distributed
from mimx.train.finetune import FinetuneConfig, finetune, predict
from mimx.train.metrics import MetricsLog
from mimx.train.precision import Precision
from mimx.transformer import set_fused_attention

# a batch -> its features, or (features, targets) for probes whose targets are not the samples' labels
Featurizer = Callable[[dict[str, Any]], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class EvalSplitConfig:
    """The ``data`` keys every modality's eval config shares."""

    train: Any = None  # labelled shards; the validation split is carved from them unless `val` is set
    test: Any = None  # labelled shards, scored once at the end
    val: Any = None  # optional validation shards of their own (then all of `train` trains)
    val_fraction: float = 0.1
    label_fraction: float = 1.0  # use this fraction of the training labels (few-label experiments)
    split_seed: int = 0
    num_classes: int | None = None  # default: 1 + the largest training label
    batch_size: int = 256  # feature extraction / evaluation batches
    num_workers: int = 2
    cache_mb: int = 1024  # train and val parts up to this size are read once and kept in memory
    feature_cache_gb: float | None = None  # frozen features of all parts; default: half the physical memory


@dataclass
class KnnConfig:
    k: int = 20
    temperature: float = 0.07


@dataclass
class SvmConfig:
    cs: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])
    max_iter: int = 20000
    standardize: bool = True  # scale features to zero mean, unit variance (statistics of the training part)


@dataclass
class AttentiveConfig:
    lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3])
    epochs: int = 20
    batch_size: int = 64
    weight_decay: float = 0.05
    heads: int = 4


@dataclass
class LinearConfig:
    lrs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    epochs: int = 50
    batch_size: int = 256
    weight_decay: float = 0.0


def check_same_classes(parts: dict[str, list[str]]) -> None:
    """Refuse parts whose ``classes.json`` (beside their shards, as ``mimx <modality> shards`` writes it) give
    one id different names: splits written from separate class folders each number their own folders. One list
    may be longer (a split without the last classes); the shared ids must name the same classes."""
    found = {}
    for key, urls in parts.items():
        local = next((u for u in urls if not is_remote(u)), None)
        path = Path(local).parent / "classes.json" if local else None
        if path is not None and path.is_file():
            found[key] = (path, read_class_names(path))
    items = list(found.items())
    for key, (path, names) in items[1:]:
        first_key, (first_path, first) = items[0]
        clash = next((i for i, (a, b) in enumerate(zip(names, first, strict=False)) if a != b), None)
        if clash is not None:
            raise UserError(f"{key}'s {path} and {first_key}'s {first_path} disagree on class id {clash} "
                            f"({names[clash]!r} vs {first[clash]!r}): the splits were written from class folders "
                            f"of their own. Rewrite {key}'s shards with `mimx <modality> shards SRC OUT "
                            f"--classes {first_path}`")


class EvalData:
    """One-pass loaders over the train / val / test parts of labelled shards.

    ``make_decoder(train_transform)`` gives the modality's decoder (random
    augmentation for fine-tuning, deterministic views otherwise);
    ``read_label(sample)`` reads a raw sample's label without decoding it.
    """

    def __init__(self, cfg: EvalSplitConfig, make_decoder: Callable[[bool], Decoder],
                 read_label: Callable[[dict[str, Any]], int]) -> None:
        if cfg.train is None or cfg.test is None:
            raise UserError("set data.train and data.test to labelled shards (e.g. data.train=path/train "
                            "data.test=path/test)")
        self.cfg = cfg
        self.make_decoder = make_decoder
        self.read_label = read_label
        for key in ("train", "val", "test"):
            spec = getattr(cfg, key)
            if isinstance(spec, str) and spec.lower().endswith((".csv", ".txt", ".json")):
                raise UserError(f"data.{key}={spec} is a file list; evaluation reads labelled shards: write them "
                                f"with `mimx <modality> shards {spec} OUT` and give data.{key}=OUT")
        self.train_urls = expand_shards(cfg.train, key="data.train")
        self.test_urls = expand_shards(cfg.test, key="data.test")
        self.val_urls = expand_shards(cfg.val, key="data.val") if cfg.val is not None else self.train_urls
        check_same_classes({"data.train": self.train_urls, "data.val": self.val_urls, "data.test": self.test_urls})
        carve = cfg.val_fraction if cfg.val is None else 0.0
        self.skips = SkipLog()
        self.parts = {"train": SplitFilter("train", carve, cfg.label_fraction, cfg.split_seed),
                      "val": SplitFilter("val", carve, 1.0, cfg.split_seed) if cfg.val is None else SplitFilter("all"),
                      "test": SplitFilter("all")}
        self._memory: dict[str, list | None] = {}
        self.rank, self.world = 0, 1  # several processes: see share()
        self._skipped: dict[str, Any] | None = None

    def share(self, dist: DistInfo) -> None:
        """Split the work over ``dist``'s processes: training streams read their own shards (or in-memory
        samples) without end; one-pass parts decode their own share of the keys (:class:`KeyShare`)."""
        self.rank, self.world = dist.rank, dist.world

    def frozen_features(self, featurize: Featurizer, protocol: str,
                        dist: DistInfo | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        """``featurize`` over the train, val and test parts, cached as :func:`feature_dtype` within
        ``data.feature_cache_gb`` (token caches of long clips or large sets stop with a clear message).

        Samples are returned in key order, so the result does not depend on the process count (nor on
        how the shards order them). With several processes (``dist`` under torchrun) each one extracts the
        keys of its hash share of every part; the main process receives them all and returns them; the
        others return ``None`` and are done.
        """
        dist = dist or DistInfo()
        budget = FeatureBudget(self.cfg)
        dtype = feature_dtype(protocol)
        self.share(dist)
        whole = FeatureBudget(self.cfg) if dist.enabled else None  # what the main process holds at the end
        parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for part in ("train", "val", "test"):
            keys: list[str] = []
            feats, labels = extract_features(self.batches(part, keyed=True), featurize, dtype, budget, part,
                                             keys=keys)
            shares = gather_to_main((feats, labels, keys))
            if shares is not None:
                shares = [s for s in shares if len(s[1])]
                if not shares:
                    raise UserError(self.empty_message(part))
                parts[part] = _in_key_order(shares)
                if whole is not None:
                    whole.charge(parts[part][0], part)
        self._skipped = self.skipped()  # collective: gathered now, while every process is still here
        return parts if dist.is_main else None

    def empty_message(self, part: str) -> str:
        """Why a part gave no usable sample: the carved split's size, and the first skip reasons."""
        if part == "val" and self.cfg.val is None:
            why = (f"the validation split carved from data.train (data.val_fraction={self.cfg.val_fraction:g}) is "
                   "empty or unusable: raise data.val_fraction, or give data.val")
        else:
            why = f"data.{part} gave no usable labelled sample"
        if self.skips.count:
            why += f"; {self.skips.count} sample(s) skipped, e.g. " + " | ".join(self.skips.examples[:2])
        return f"no sample to evaluate in the {part} split: {why}"

    def skipped(self) -> dict[str, Any]:
        """Skipped samples of every process together (collective under torchrun, once)."""
        if self._skipped is not None:
            return self._skipped
        total = SkipLog()
        for state in gather_objects(self.skips.state_dict()):
            total.count += state["count"]
            total.repeats += state.get("repeats", 0)
            total.examples += state["examples"][: max(0, total.keep - len(total.examples))]
        return total.state_dict()

    def urls(self, part: str) -> list[str]:
        """The shards a part is read from."""
        return {"train": self.train_urls, "val": self.val_urls, "test": self.test_urls}[part]

    def _in_memory(self, part: str) -> list | None:
        """Raw samples of a train or val part, read once (None when larger than data.cache_mb)."""
        if part == "test":  # scored once: streamed
            return None
        if part not in self._memory:
            self._memory[part] = read_raw(self.urls(part), self.parts[part], max_bytes=self.cfg.cache_mb * 2**20,
                                          skips=self.skips)
        return self._memory[part]

    def batches(self, part: str, *, train_transform: bool = False, batch_size: int | None = None,
                seed: int = 0, endless: bool = False, keyed: bool = False) -> StreamLoader:
        """One pass over a part: deterministic views in file order, or (``train_transform``) shuffled augmentations.

        ``endless``: a stream without end of this process's own shards or samples (training on several
        processes); otherwise, with several processes, one pass over this process's share of the keys.
        ``keyed``: batches carry their samples' keys as ``_key``.
        """
        urls = self.urls(part)
        decoder = self.make_decoder(train_transform)
        if keyed:
            decoder = _Keyed(decoder)
        kwargs: dict[str, Any] = dict(batch_size=batch_size or self.cfg.batch_size,
                                      shuffle=2000 if train_transform else 0, seed=seed, epochs=None if endless else 1)
        if endless:
            kwargs.update(rank=self.rank, world=self.world)
        elif self.world > 1:
            decoder = FilteredDecoder(decoder, KeyShare(self.rank, self.world))
        readers = self.world if endless else 1
        samples = self._in_memory(part)
        if samples is not None and not samples:
            raise UserError(self.empty_message(part))
        if samples is not None:
            stream: ShardStream = MemoryStream(samples, decoder, **kwargs)
            workers = max(1, min(self.cfg.num_workers, len(samples) // readers))
        else:
            if len(urls) < readers:
                raise UserError(f"training on {readers} processes needs at least {readers} shards of the {part} "
                                f"part, which has {len(urls)}: write smaller shards, or raise data.cache_mb so the "
                                "part is held in memory and split by sample")
            stream = ShardStream(urls, FilteredDecoder(decoder, self.parts[part]), **kwargs)
            workers = max(1, min(self.cfg.num_workers, len(urls) // readers))
        loader = StreamLoader(stream, num_workers=workers, prefetch_factor=4)
        loader.skips = self.skips  # one report for the whole evaluation
        return loader

    def count(self, part: str) -> int:
        samples = self._in_memory(part)
        if samples is not None:
            return len(samples)
        return count_kept(self.urls(part), self.parts[part])

    def labels(self, part: str) -> torch.Tensor:
        """Every label of a part, read without decoding the samples."""
        samples = self._in_memory(part)
        if samples is not None:
            return torch.tensor([self.read_label(s) for s in samples], dtype=torch.long)
        urls = self.urls(part)
        reader = self.read_label
        stream = ShardStream(urls, FilteredDecoder(_LabelOnly(reader), self.parts[part]), batch_size=4096,
                             shuffle=0, epochs=1)
        loader = StreamLoader(stream, num_workers=0)
        loader.skips = self.skips
        found = [b["label"].long() for b in loader if "label" in b]
        return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)


def _in_key_order(shares: list[tuple[torch.Tensor, torch.Tensor, list[str]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)`` of every share together, sorted by sample key (no copy when already sorted)."""
    every = [k for _, _, ks in shares for k in ks]
    feats = shares[0][0] if len(shares) == 1 else torch.cat([f for f, _, _ in shares])
    labels = shares[0][1] if len(shares) == 1 else torch.cat([y for _, y, _ in shares])
    if all(a <= b for a, b in itertools.pairwise(every)):
        return feats, labels
    order = torch.tensor(sorted(range(len(every)), key=every.__getitem__), dtype=torch.long)
    return feats[order], labels[order]


class _Keyed:
    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder

    def __call__(self, sample: dict[str, Any], rng: Any) -> dict[str, Any] | None:
        out = self.decoder(sample, rng)
        return None if out is None else {**out, "_key": sample["__key__"]}


class _LabelOnly:
    def __init__(self, read_label: Callable[[dict[str, Any]], int]) -> None:
        self.read_label = read_label

    def __call__(self, sample: dict[str, Any], rng: Any) -> dict[str, int]:
        return {"label": self.read_label(sample)}


class FeatureBudget:
    """Bytes left for cached frozen features: ``data.feature_cache_gb``, else half the physical memory."""

    def __init__(self, cfg: EvalSplitConfig) -> None:
        if cfg.feature_cache_gb is not None:
            self.left = int(cfg.feature_cache_gb * 2**30)
        else:
            try:
                self.left = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
            except (ValueError, OSError, AttributeError):  # no sysconf (Windows): no limit
                self.left = 2**62
        self.samples: dict[str, int] = {}

    def charge(self, batch: torch.Tensor, part: str) -> None:
        """Count one cached batch ``[B, ...]`` of ``part``; past the budget, stop with the fixes."""
        self.left -= batch.numel() * batch.element_size()
        self.samples[part] = self.samples.get(part, 0) + len(batch)
        if self.left < 0:
            raise UserError(
                f"frozen features of the {part} part passed data.feature_cache_gb after {self.samples[part]} "
                f"samples of {tuple(batch.shape[1:])} features; use data.label_fraction, fewer views or a pooled "
                "protocol (linear, knn), or raise data.feature_cache_gb")


@torch.no_grad()
def extract_features(loader: StreamLoader, featurize: Featurizer, dtype: torch.dtype = torch.float32,
                     budget: FeatureBudget | None = None, part: str = "",
                     keys: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``featurize(batch)`` over a loader: features ``[N, ...]`` as ``dtype`` on the CPU and labels ``[N]``.

    A featurizer that returns ``(features, targets)`` gives its own targets (e.g. per-patch maps for dense
    probes) in place of the batch's labels. Token features for the attentive probe are kept as bf16 (half
    the memory of a large cache). With ``keys`` (a keyed loader, one process's share) the samples' keys are
    appended to it, and an empty share gives empty tensors instead of an error."""
    feats, labels = [], []
    for batch in loader:
        batch_keys = batch.pop("_key", [])
        if not batch:  # nothing decoded
            continue
        if keys is not None:
            keys.extend(batch_keys)
        out = featurize(batch)
        features, targets = out if isinstance(out, tuple) else (out, batch["label"].long())
        feats.append(features.to(dtype).cpu())
        labels.append(targets.cpu())
        if budget is not None:
            budget.charge(feats[-1], part)
    if not feats:
        if keys is not None:
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        raise UserError("no labelled sample in this split; check data.val_fraction and the shards")
    return torch.cat(feats), torch.cat(labels)


def feature_dtype(protocol: str) -> torch.dtype:
    """How frozen features are cached for ``protocol``: bf16 tokens for the attentive probe, else fp32."""
    return torch.bfloat16 if protocol == "attentive" else torch.float32


def check_choice(value: str, choices: Sequence[str], key: str, usage: str = "") -> None:
    """One clear error when a config value is not one of ``choices``."""
    if value not in choices:
        hint = f" ({usage})" if usage else ""
        raise UserError(f"{key}={value!r}; choose one of {', '.join(choices)}{hint}")


def frozen_precision(model: torch.nn.Module, precision: str, device: torch.device) -> Precision:
    """Move a frozen encoder to ``device`` and set it up for feature extraction at ``precision``."""
    chosen = Precision(precision, device)
    model.to(device)
    set_fused_attention(model, chosen.prefers_fused_attention())
    chosen.attach(model)
    return chosen


def eval_processes(device: str, protocol: str,
                   several: Sequence[str] = ("knn", "linear", "attentive", "svm", "finetune")) -> DistInfo:
    """This process's place when launched by torchrun (only for the protocols in ``several``), or a single
    process."""
    dist = init_distributed(device)
    if dist.world > 1 and protocol not in several:
        also = f" (eval {' / '.join(several)} runs on several)" if several else ""
        raise UserError(f"eval {protocol} runs as one process: launch it without torchrun{also}")
    return dist


def scored(model: torch.nn.Module, batches: Iterable[Any], prepare: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
           precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict` over this process's share of a part, then every process's shares together."""
    shares = gather_objects(predict(model, batches, prepare, precision))
    return torch.cat([p for p, _ in shares]), torch.cat([y for _, y in shares])


def finetune_protocol(model: torch.nn.Module, ft: FinetuneConfig, data: EvalData, *, depth: int,
                      num_classes: int | None, prepare: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
                      device: torch.device, seed: int, eval_batch_size: int | None = None,
                      build: Callable[[int], torch.nn.Module] | None = None,
                      dist: DistInfo | None = None, state_path: Path | None = None) -> dict[str, Any]:
    """Fine-tune on ``train``, keep the best ``val`` epoch, score ``test`` once; returns the result fields.

    ``build(num_classes)`` makes the classifier once the class count is known (else ``model`` is it).
    With ``dist`` (torchrun), the processes train with DDP on their own shards, an epoch being
    ``train samples / global batch`` steps, and score their shares of val and test together.
    ``state_path``: the per-epoch state (:func:`finetune_state_path`) a rerun continues from.
    """
    dist = dist or DistInfo()
    data.share(dist)
    train_labels = data.labels("train")
    num_classes = num_classes or int(train_labels.max()) + 1
    check_labels(train_labels, num_classes, "train")
    counts = {p: data.count(p) for p in ("train", "val", "test")}
    if counts["train"] == 0 or counts["val"] == 0:
        raise UserError(f"fine-tuning needs training and validation samples, got {counts}")
    classifier = build(num_classes) if build is not None else model
    steps = max(1, counts["train"] // (ft.batch_size * ft.accum_steps * dist.world))  # optimiser steps
    loader = None
    if dist.world == 1:
        def train_epoch(epoch: int):
            return data.batches("train", train_transform=True, batch_size=ft.batch_size, seed=seed + epoch)
    else:  # equal step counts on every process, whatever each one's shards hold
        loader = data.batches("train", train_transform=True, batch_size=ft.batch_size, seed=seed, endless=True)

        def endless():  # iterated from the first epoch on, after a resumed run has positioned the loader
            yield from loader

        stream = endless()

        def train_epoch(epoch: int):
            return itertools.islice(stream, steps * ft.accum_steps)

    def val_scores(model: torch.nn.Module, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
        return scored(model, data.batches("val", batch_size=eval_batch_size), prepare, precision)

    best = finetune(classifier, ft, depth=depth, num_classes=num_classes, train_epoch=train_epoch,
                    val_scores=val_scores, prepare=prepare, steps_per_epoch=steps, device=device, seed=seed,
                    dist=dist, state_path=state_path, train_loader=loader)
    if best.stopped_at_epoch is not None:
        return {"stopped_at_epoch": best.stopped_at_epoch, "epochs": ft.epochs}
    # finetune() hands back an fp32 model: score it under autocast (bf16-pure trained models included)
    test_precision = Precision.for_fp32_model(ft.precision, device)
    pred, labels = scored(classifier, data.batches("test", batch_size=eval_batch_size), prepare, test_precision)
    return dict(num_classes=num_classes, train_samples=counts["train"], val_samples=counts["val"],
                test_samples=counts["test"], test_scored=len(labels), val_top1=best.best_val_top1,
                test_top1=accuracy(pred, labels),
                chosen={"epoch": best.best_epoch}, finetune=asdict(ft), history=best.history)


def finetune_state_path(cfg: DictConfig, dist: DistInfo) -> Path:
    """Where ``eval finetune`` keeps its per-epoch state: one file per setup (the whole eval config but
    the stop/resume keys and run.dir, and the process count), so only the same fine-tuning continues."""
    plain = to_plain(cfg)
    for section, key in (("finetune", "stop_at_epoch"), ("finetune", "resume"), ("run", "dir")):
        plain.get(section, {}).pop(key, None)
    digest = hashlib.sha1(json.dumps({"config": plain, "world": dist.world}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:10]
    return run_dir_of(cfg) / "checkpoints" / f"finetune-{cfg.encoder}-{digest}.pt"


def check_labels(labels: torch.Tensor, num_classes: int, part: str) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        raise UserError(f"{int(bad.sum())} {part} sample(s) have no label or a label outside 0..{num_classes - 1} "
                        "(shards need KEY.cls or KEY.json with a label; set data.num_classes if it is too low)")


def frozen_protocol(protocol: str, cfg: DictConfig, parts: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    num_classes: int | None) -> dict[str, Any]:
    """kNN, linear probe, attentive probe or linear SVM on frozen ``train``/``val``/``test`` features.

    Features are ``[N, D]``; the attentive probe takes token features ``[N, L, D]`` or ``[N, V, L, D]``.
    The test part is scored once."""
    num_classes = num_classes or int(parts["train"][1].max()) + 1
    for part, (_, labels) in parts.items():
        check_labels(labels, num_classes, part)
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = parts["train"], parts["val"], parts["test"]
    result: dict[str, Any] = dict(num_classes=num_classes, train_samples=len(tr_y), val_samples=len(va_y),
                                  test_samples=len(te_y), feature_dim=tr_x.shape[-1])
    if protocol == "knn":
        knn = from_mapping(KnnConfig, cfg.knn, "knn")
        result["val_top1"] = accuracy(knn_predict(tr_x, tr_y, va_x, num_classes, knn.k, knn.temperature), va_y)
        # the test neighbours come from train + val: every labelled training sample
        pool_x, pool_y = torch.cat([tr_x, va_x]), torch.cat([tr_y, va_y])
        result["test_top1"] = accuracy(knn_predict(pool_x, pool_y, te_x, num_classes, knn.k, knn.temperature), te_y)
        result["knn"] = asdict(knn)
        return result
    if protocol == "svm":
        svm = from_mapping(SvmConfig, cfg.svm, "svm")
        result.update(svm_protocol(svm, parts, seed=cfg.seed))
        return result
    if protocol == "attentive":
        att = from_mapping(AttentiveConfig, cfg.attentive, "attentive")
        if att.heads < 1 or tr_x.shape[-1] % att.heads:
            raise UserError(f"attentive.heads={att.heads} must divide the token width {tr_x.shape[-1]}")
        probe = train_attentive_probe(tr_x, tr_y, va_x, va_y, num_classes, lrs=tuple(att.lrs), epochs=att.epochs,
                                      batch_size=att.batch_size, weight_decay=att.weight_decay, heads=att.heads,
                                      seed=cfg.seed)
        settings = {"attentive": asdict(att), "tokens": tr_x.shape[-2]}
    else:
        lin = from_mapping(LinearConfig, cfg.linear, "linear")
        probe = train_linear_probe(tr_x, tr_y, va_x, va_y, num_classes, lrs=tuple(lin.lrs), epochs=lin.epochs,
                                   batch_size=lin.batch_size, weight_decay=lin.weight_decay, seed=cfg.seed)
        settings = {"linear": asdict(lin)}
    result["test_top1"] = accuracy(probe_predict(probe.model, te_x), te_y)  # each probe casts its input
    result.update(val_top1=probe.val_top1, chosen={"lr": probe.lr, "epoch": probe.epoch}, history=probe.history,
                  **settings)
    return result


def svm_protocol(svm: SvmConfig, parts: dict[str, tuple[torch.Tensor, torch.Tensor]], seed: int = 0
                 ) -> dict[str, Any]:
    """Linear SVM (one-vs-rest, scikit-learn's LinearSVC) on frozen features; C chosen on validation."""
    try:
        from sklearn.svm import LinearSVC
    except ImportError as exc:
        raise UserError("the svm protocol needs scikit-learn: pip install scikit-learn") from exc
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = ((x.double().numpy(), y.numpy()) for x, y in
                                                (parts["train"], parts["val"], parts["test"]))
    if svm.standardize:
        mean, std = tr_x.mean(0), tr_x.std(0) + 1e-8
        tr_x, va_x, te_x = ((x - mean) / std for x in (tr_x, va_x, te_x))
    history, best = [], None
    for c in svm.cs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LinearSVC(C=c, max_iter=svm.max_iter, random_state=seed).fit(tr_x, tr_y)
        top1 = float((model.predict(va_x) == va_y).mean() * 100)
        history.append({"C": c, "val_top1": top1})
        if best is None or top1 > best[0]:
            best = (top1, c, model)
    top1, c, model = best
    test_top1 = float((model.predict(te_x) == te_y).mean() * 100)
    return {"val_top1": top1, "test_top1": test_top1, "chosen": {"C": c}, "svm": asdict(svm), "history": history}


def checkpoint_step(path: str | Path) -> int:
    """The training step a checkpoint or weights file records (0 if it does not)."""
    from mimx.train.checkpoint import read_model

    try:
        _, meta = read_model(path)
    except UserError:
        return 0
    return int(meta.get("step", 0) or 0)


def run_dir_of(cfg: DictConfig) -> Path:
    """``run.dir``, else the folder of the evaluated checkpoint's run."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    checkpoint = Path(cfg.checkpoint)
    if checkpoint.is_dir():
        return checkpoint
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return checkpoint.parent


def write_result(cfg: DictConfig, result: dict[str, Any]) -> Path:
    """``eval-<protocol>-<encoder>.json`` and a metrics row in the run folder; one summary line on stderr.

    A fine-tuning stopped by ``finetune.stop_at_epoch`` writes nothing yet and says how to continue.
    """
    run_dir = run_dir_of(cfg)
    if "stopped_at_epoch" in result:
        print(f"[mimx] finetune stopped after epoch {result['stopped_at_epoch']}/{result['epochs']}; run the same "
              "command again (without finetune.stop_at_epoch) to continue", file=sys.stderr)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"eval-{result['protocol']}-{result['encoder']}"
    path = run_dir / f"{name}.json"
    path.write_text(json.dumps({**result, "config": to_plain(cfg)}, indent=1))
    metrics = MetricsLog(run_dir, tensorboard=False)
    metrics.log({f"{name}/val_top1": round(result["val_top1"], 3), f"{name}/test_top1": round(result["test_top1"], 3)},
                step=result["checkpoint_step"])
    metrics.close()
    metric = result.get("metric", "top-1")
    print(f"[mimx] {result['protocol']} ({result['encoder']} encoder): val {metric} {result['val_top1']:.2f}%, "
          f"test {metric} {result['test_top1']:.2f}% on {result['test_samples']} test samples "
          f"({result['seconds']} s); written to {path}", file=sys.stderr)
    skipped = result["skipped"]
    if skipped["count"]:
        print(f"[mimx] skipped {skipped['count']} unreadable sample(s): {skipped['examples'][:5]}", file=sys.stderr)
    return path
