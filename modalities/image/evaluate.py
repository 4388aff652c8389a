"""``mimx image eval knn|linear|finetune``: evaluation protocols on labelled shards.

Choices (kNN: none beyond the config; linear probe: lr and epoch; fine-tune:
epoch) are made on a validation split carved from the training shards by key
hash; the test shards are scored once, at the end, with the chosen model.
Results go to ``<run.dir>/eval-<protocol>-<encoder>.json`` and a row of the
run's ``metrics.csv``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mimx.config import UserError, from_mapping, to_plain
from mimx.data.shards import expand_shards
from mimx.data.split import FilteredDecoder, SplitFilter, count_kept
from mimx.data.stream import MemoryStream, ShardStream, SkipLog, StreamLoader, read_raw
from mimx.evaluation import accuracy, knn_predict, train_linear_probe
from mimx.modalities.image.data import ImageDataConfig, ImageDecoder, Normalizer, read_label
from mimx.modalities.image.export import load_image_mae
from mimx.modalities.image.interop import to_timm
from mimx.modalities.image.model import ImageMAE
from mimx.train.checkpoint import read_model
from mimx.train.distributed import pick_device
from mimx.train.finetune import FinetuneConfig, finetune, predict
from mimx.train.metrics import MetricsLog
from mimx.train.precision import Precision
from mimx.transformer import set_fused_attention

PROTOCOLS = ("knn", "linear", "finetune")
ENCODERS = ("pretrained", "random", "pixels")


@dataclass
class EvalDataConfig:
    """``data`` section of ``configs/image/eval.yaml``."""

    train: Any = None  # labelled shards (cls or json label); the validation split is carved from them
    test: Any = None  # labelled shards, scored once at the end
    val_fraction: float = 0.1
    label_fraction: float = 1.0  # use this fraction of the training labels (few-label experiments)
    split_seed: int = 0
    num_classes: int | None = None  # default: 1 + the largest training label
    crop_pct: float = 1.0  # evaluation crop: resize to size / crop_pct, centre crop
    scale: list[float] = field(default_factory=lambda: [0.25, 1.0])  # fine-tune RandomResizedCrop scale
    hflip: float = 0.5
    batch_size: int = 256  # feature extraction / evaluation batches
    num_workers: int = 2
    cache_mb: int = 1024  # train and val parts up to this size are read once and kept in memory


@dataclass
class KnnConfig:
    k: int = 20
    temperature: float = 0.07


@dataclass
class LinearConfig:
    lrs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    epochs: int = 50
    batch_size: int = 256
    weight_decay: float = 0.0


class EvalData:
    """Streams of the train / val / test parts of labelled shards for one model input size."""

    def __init__(self, cfg: EvalDataConfig, image_hw: tuple[int, int], channels: int, norm: dict) -> None:
        if cfg.train is None or cfg.test is None:
            raise UserError("set data.train and data.test to labelled shards (e.g. data.train=path/train "
                            "data.test=path/test)")
        self.cfg = cfg
        self.train_urls = expand_shards(cfg.train)
        self.test_urls = expand_shards(cfg.test)
        self.image = ImageDataConfig(image_size=list(image_hw), channels=channels, crop_pct=cfg.crop_pct,
                                     scale=list(cfg.scale), hflip=cfg.hflip, **norm)
        self.normalizer = Normalizer(self.image.mean, self.image.std)
        self.skips = SkipLog()
        self.parts = {"train": SplitFilter("train", cfg.val_fraction, cfg.label_fraction, cfg.split_seed),
                      "val": SplitFilter("val", cfg.val_fraction, 1.0, cfg.split_seed),
                      "test": SplitFilter("all")}
        self._memory: dict[str, list | None] = {}

    def _in_memory(self, part: str) -> list | None:
        """Raw samples of a train or val part, read once (None when larger than data.cache_mb)."""
        if part == "test":  # scored once: streamed
            return None
        if part not in self._memory:
            self._memory[part] = read_raw(self.train_urls, self.parts[part], max_bytes=self.cfg.cache_mb * 2**20,
                                          skips=self.skips)
        return self._memory[part]

    def batches(self, part: str, *, train_transform: bool = False, batch_size: int | None = None,
                seed: int = 0) -> StreamLoader:
        """One pass over a part: centre crops in file order, or (``train_transform``) shuffled random crops."""
        urls = self.test_urls if part == "test" else self.train_urls
        decoder = ImageDecoder(self.image, train=train_transform)
        kwargs = dict(batch_size=batch_size or self.cfg.batch_size, shuffle=2000 if train_transform else 0,
                      seed=seed, epochs=1)
        samples = self._in_memory(part)
        if samples is not None:
            stream: ShardStream = MemoryStream(samples, decoder, **kwargs)
            workers = min(self.cfg.num_workers, len(samples))
        else:
            stream = ShardStream(urls, FilteredDecoder(decoder, self.parts[part]), **kwargs)
            workers = min(self.cfg.num_workers, len(urls))
        loader = StreamLoader(stream, num_workers=workers, prefetch_factor=4)
        loader.skips = self.skips  # one report for the whole evaluation
        return loader

    def count(self, part: str) -> int:
        samples = self._in_memory(part)
        if samples is not None:
            return len(samples)
        return count_kept(self.test_urls if part == "test" else self.train_urls, self.parts[part])

    def labels(self, part: str) -> torch.Tensor:
        """Every label of a part, read without decoding images."""
        samples = self._in_memory(part)
        if samples is not None:
            return torch.tensor([read_label(s) for s in samples], dtype=torch.long)
        urls = self.test_urls if part == "test" else self.train_urls
        stream = ShardStream(urls, FilteredDecoder(_label_only, self.parts[part]), batch_size=4096, shuffle=0,
                             epochs=1)
        loader = StreamLoader(stream, num_workers=0)
        loader.skips = self.skips
        found = [b["label"].long() for b in loader]
        return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)


def _label_only(sample: dict[str, Any], rng: Any) -> dict[str, int]:
    return {"label": read_label(sample)}


def _features(encoder: ImageMAE | None, loader: StreamLoader, normalizer: Normalizer, pool: str,
              device: torch.device, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    with torch.no_grad():
        for batch in loader:
            x = normalizer(batch["image"].to(device))
            if encoder is None:  # raw pixels
                f = x.flatten(1)
            else:
                with precision.autocast():
                    tokens = encoder.encode(x.to(precision.input_dtype))
                f = tokens[:, 0] if pool == "cls" else tokens[:, encoder.encoder.num_prefix_tokens:].mean(1)
            feats.append(f.float().cpu())
            labels.append(batch["label"].long())
    if not feats:
        raise UserError("no labelled sample in this split; check data.val_fraction and the shards")
    return torch.cat(feats), torch.cat(labels)


def _check_labels(labels: torch.Tensor, num_classes: int, part: str) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        raise UserError(f"{int(bad.sum())} {part} sample(s) have no label or a label outside 0..{num_classes - 1} "
                        "(shards need KEY.cls or KEY.json with a label; set data.num_classes if it is too low)")


def _load_encoder(cfg: DictConfig, encoder_kind: str) -> tuple[ImageMAE, int]:
    model = load_image_mae(cfg.checkpoint)
    step = 0
    try:
        _, meta = read_model(cfg.checkpoint)
        step = int(meta.get("step", 0) or 0)
    except UserError:
        pass
    if encoder_kind == "random":
        torch.manual_seed(cfg.seed)
        norm = model.normalization
        model = ImageMAE(model.config)
        model.normalization = norm
    return model.eval(), step


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run one protocol as configured in ``configs/image/eval.yaml``; returns the result dict."""
    protocol, encoder_kind = cfg.protocol, cfg.encoder
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)} (mimx image eval knn ...)")
    if encoder_kind not in ENCODERS:
        raise UserError(f"encoder={encoder_kind!r}; choose one of {', '.join(ENCODERS)}")
    if encoder_kind == "pixels" and protocol == "finetune":
        raise UserError("encoder=pixels has nothing to fine-tune; use knn or linear")
    if cfg.pool not in ("cls", "mean"):
        raise UserError(f"pool={cfg.pool!r}; choose cls or mean")
    data_cfg = from_mapping(EvalDataConfig, cfg.data, "data")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    mae, step = _load_encoder(cfg, encoder_kind)
    data = EvalData(data_cfg, mae.config.image_hw, mae.config.in_chans, mae.normalization)
    started = time.perf_counter()
    result: dict[str, Any] = {"protocol": protocol, "encoder": encoder_kind, "checkpoint": str(cfg.checkpoint),
                              "checkpoint_step": step, "pool": cfg.pool, "data": asdict(data_cfg)}

    if protocol in ("knn", "linear"):
        precision = Precision(cfg.precision, device)
        encoder = None if encoder_kind == "pixels" else mae.to(device)
        if encoder is not None:
            set_fused_attention(encoder, precision.prefers_fused_attention())
            precision.attach(encoder)
        parts = {part: _features(encoder, data.batches(part), data.normalizer, cfg.pool, device, precision)
                 for part in ("train", "val", "test")}
        num_classes = data_cfg.num_classes or int(parts["train"][1].max()) + 1
        for part, (_, labels) in parts.items():
            _check_labels(labels, num_classes, part)
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = parts["train"], parts["val"], parts["test"]
        result.update(num_classes=num_classes, train_samples=len(tr_y), val_samples=len(va_y),
                      test_samples=len(te_y), feature_dim=tr_x.shape[1])
        if protocol == "knn":
            knn = from_mapping(KnnConfig, cfg.knn, "knn")
            result["val_top1"] = accuracy(knn_predict(tr_x, tr_y, va_x, num_classes, knn.k, knn.temperature), va_y)
            # the test neighbours come from train + val: every labelled training sample
            pool_x, pool_y = torch.cat([tr_x, va_x]), torch.cat([tr_y, va_y])
            result["test_top1"] = accuracy(knn_predict(pool_x, pool_y, te_x, num_classes, knn.k, knn.temperature),
                                           te_y)
            result["knn"] = asdict(knn)
        else:
            lin = from_mapping(LinearConfig, cfg.linear, "linear")
            probe = train_linear_probe(tr_x, tr_y, va_x, va_y, num_classes, lrs=tuple(lin.lrs), epochs=lin.epochs,
                                       batch_size=lin.batch_size, weight_decay=lin.weight_decay, seed=cfg.seed)
            with torch.no_grad():
                probe.model.eval()
                result["test_top1"] = accuracy(probe.model(te_x).argmax(1), te_y)
            result.update(val_top1=probe.val_top1, chosen={"lr": probe.lr, "epoch": probe.epoch},
                          linear=asdict(lin), history=probe.history)
    else:
        ft = from_mapping(FinetuneConfig, cfg.finetune, "finetune")
        train_labels = data.labels("train")
        num_classes = data_cfg.num_classes or int(train_labels.max()) + 1
        _check_labels(train_labels, num_classes, "train")
        counts = {p: data.count(p) for p in ("train", "val", "test")}
        result.update(num_classes=num_classes, train_samples=counts["train"], val_samples=counts["val"],
                      test_samples=counts["test"])
        if counts["train"] == 0 or counts["val"] == 0:
            raise UserError(f"fine-tuning needs training and validation samples, got {counts}")
        pool = "avg" if ft.pool == "avg" else "token"
        vit = to_timm(mae, num_classes=num_classes, drop_path_rate=ft.drop_path, global_pool=pool)
        normalizer = data.normalizer

        def prepare(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            return normalizer(batch["image"].to(device)), batch["label"].long().to(device)

        def train_epoch(epoch: int):
            return data.batches("train", train_transform=True, batch_size=ft.batch_size, seed=cfg.seed + epoch)

        steps = max(1, counts["train"] // ft.batch_size)
        best = finetune(vit, ft, depth=mae.config.depth, num_classes=num_classes, train_epoch=train_epoch,
                        val_batches=lambda: data.batches("val"), prepare=prepare, steps_per_epoch=steps,
                        device=device, seed=cfg.seed)
        # finetune() hands back an fp32 model: score it under autocast (bf16-pure trained models included)
        test_precision = Precision("bf16" if ft.precision == "bf16-pure" else ft.precision, device)
        pred, labels = predict(vit, data.batches("test"), prepare, test_precision)
        result.update(val_top1=best.best_val_top1, test_top1=accuracy(pred, labels),
                      chosen={"epoch": best.best_epoch}, finetune=asdict(ft), history=best.history)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["skipped"] = data.skips.state_dict()
    _write(cfg, result)
    return result


def _run_dir(cfg: DictConfig) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    checkpoint = Path(cfg.checkpoint)
    if checkpoint.is_dir():
        return checkpoint
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return checkpoint.parent


def _write(cfg: DictConfig, result: dict[str, Any]) -> None:
    run_dir = _run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"eval-{result['protocol']}-{result['encoder']}"
    path = run_dir / f"{name}.json"
    path.write_text(json.dumps({**result, "config": to_plain(cfg)}, indent=1))
    metrics = MetricsLog(run_dir, tensorboard=False)
    metrics.log({f"{name}/val_top1": round(result["val_top1"], 3), f"{name}/test_top1": round(result["test_top1"], 3)},
                step=result["checkpoint_step"])
    metrics.close()
    print(f"[mimx] {result['protocol']} ({result['encoder']} encoder): val top-1 {result['val_top1']:.2f}%, "
          f"test top-1 {result['test_top1']:.2f}% on {result['test_samples']} test samples "
          f"({result['seconds']} s); written to {path}", file=sys.stderr)
    skipped = result["skipped"]
    if skipped["count"]:
        print(f"[mimx] skipped {skipped['count']} unreadable sample(s): {skipped['examples'][:5]}", file=sys.stderr)
