"""``mimx image pretrain``: MAE, SimMIM, MaskFeat or BEiT-style pretraining on image shards."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from webdataset.tariterators import tarfile_samples

from mimx.config import UserError, from_mapping, to_plain
from mimx.data.shards import dataset_size, expand_shards
from mimx.data.stream import ShardStream
from mimx.masking import MASKINGS
from mimx.modalities.image.data import ImageDataConfig, ImageDecoder, Normalizer
from mimx.modalities.image.figures import reconstruction_panels, save_reconstruction_grid
from mimx.modalities.image.model import ImageMAE, ImageMAEConfig, check_image_codebook, image_mae_config
from mimx.train import checkpoint as ckpt
from mimx.train.distributed import DistInfo
from mimx.train.engine import StepContext, TrainConfig, TrainResult
from mimx.train.launch import run_pretraining

__all__ = ["ImagePretrainTask", "fixed_images", "pretrain"]


def fixed_images(urls: list[str], decoder: ImageDecoder, count: int) -> torch.Tensor:
    """``count`` decodable images for figures: the first ones of shards spread evenly over ``urls``."""
    picks = Counter(urls[int(i)] for i in np.linspace(0, len(urls) - 1, count))
    images = []
    rng = np.random.default_rng(0)
    for url in dict.fromkeys(urls[int(i)] for i in np.linspace(0, len(urls) - 1, count)):
        taken = 0
        for sample in tarfile_samples([{"url": url}], handler=lambda exc: True):
            try:
                images.append(decoder(sample, rng)["image"])
            except Exception:
                continue
            taken += 1
            if taken == picks[url]:
                break
    if not images:
        raise UserError(f"no decodable image in {urls[:3]}")
    return torch.stack(images)


class ImagePretrainTask:
    """Connects an :class:`ImageMAE` to the training engine."""

    modality = "image"

    def __init__(self, config: ImageMAEConfig, data: ImageDataConfig, figure_images: torch.Tensor | None = None,
                 figure_seed: int = 0) -> None:
        self.config = config
        self.data = data
        self.normalizer = Normalizer(data.mean, data.std)
        kind = config.masking.get("kind", "random")
        self.random_masking = kind == "random"
        self.host_masking = getattr(MASKINGS.get(kind), "on_host", False)
        self.figure_images = figure_images
        self.figure_seed = figure_seed

    def meta(self) -> dict[str, Any]:
        # the codes travel in the weights (target.codebook): a loaded model never reads the file again
        config = {**dataclasses.asdict(self.config), "codebook": None}
        meta = {"architecture": self.config.architecture(), "model_config": config,
                "normalization": {"mean": list(self.data.mean), "std": list(self.data.std)}}
        if self.config.codebook:
            meta["codebook_file"] = str(self.config.codebook)
        return meta

    def convert_weights(self, path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A transformers folder (``save_pretrained``) as mimx weights, for ``train.init``."""
        from mimx.modalities.image.interop import from_transformers

        model = from_transformers(path)
        return model.state_dict(), {"modality": self.modality, "architecture": model.config.architecture()}

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
        x = self.normalizer(batch["image"].to(ctx.device, non_blocking=True)).to(ctx.dtype)
        if self.random_masking:
            p = self.config.patch_size
            tokens = (x.shape[-2] // p) * (x.shape[-1] // p)
            return model(x, noise=ctx.global_noise(x.shape[0], tokens)).loss
        return model(x, generator=ctx.host_local if self.host_masking else ctx.local).loss

    def figure(self, model: ImageMAE, path: Path) -> None:
        if self.figure_images is None:
            return
        weight = next(model.parameters())
        x = self.normalizer(self.figure_images.to(weight.device)).to(weight.dtype)
        gen = torch.Generator(device=weight.device).manual_seed(self.figure_seed)
        mask = model.make_mask(x, generator=gen)
        save_reconstruction_grid(reconstruction_panels(model, x, mask, self.normalizer), path)


def sections(cfg: DictConfig, *, check_tokens: bool = True) -> tuple[TrainConfig, ImageMAEConfig, ImageDataConfig]:
    """The train, model and data sections of a composed pretraining config, checked against each other."""
    train = from_mapping(TrainConfig, cfg.train, "train")
    model_values = to_plain(cfg.model)
    model_values["masking"] = to_plain(cfg.masking)
    codebook = model_values.get("codebook")
    saved = ckpt.resume_path(train.resume, cfg.run.dir) if check_tokens else None
    resuming = saved is not None and saved.exists()
    if resuming and model_values.get("target") == "tokens" and not (codebook and Path(codebook).exists()):
        # a run that has started carries its codes: it continues without the file it was started from
        if codebook:
            print(f"[mimx] codebook {codebook} is gone; the run continues with the codes in {saved}", file=sys.stderr)
        vocab = model_values.get("vocab_size") or ckpt.load(saved)["meta"]["model_config"].get("vocab_size")
        model_values.update(codebook=None, vocab_size=vocab)
    # a new run started from another token run's weights (train.init) without a codebook of its own takes the
    # init's codes (the trainer fills them) and, unless set, its vocabulary size
    from_init = False
    if not resuming and check_tokens and train.init and model_values.get("target") == "tokens" and not codebook:
        init_config = _init_model_config(train.init)
        if init_config and init_config.get("target") == "tokens":
            from_init = True
            model_values["vocab_size"] = model_values.get("vocab_size") or init_config.get("vocab_size")
    model = image_mae_config(model_values)
    data = from_mapping(ImageDataConfig, cfg.data, "data")
    if tuple(model.image_hw) != data.hw:
        raise UserError(f"data.image_size {data.hw} differs from model.img_size {model.image_hw}; set one "
                        "to match the other")
    if model.in_chans != data.channels:
        raise UserError(f"model.in_chans={model.in_chans} but data.channels={data.channels}")
    if len(data.mean) != data.channels or len(data.std) != data.channels:
        raise UserError(f"data.mean and data.std need {data.channels} values, one per channel")
    if model.target == "tokens" and check_tokens and not ((resuming or from_init) and model.codebook is None):
        check_codebook(model, data)
    return train, model, data


def _init_model_config(path: str) -> dict | None:
    """The model config of a mimx run, checkpoint or weights file (``None`` for anything else)."""
    try:
        return ckpt.read_model(path, weights=False)[1].get("model_config")
    except UserError:
        return None


def check_codebook(model: ImageMAEConfig, data: ImageDataConfig) -> None:
    """A token target needs a codebook fitted on patches of this model's size and this data's normalisation."""
    if not model.codebook:
        raise UserError("model.target=tokens (method=beit) predicts codebook ids: fit a codebook with "
                        "`mimx image codebook <the same overrides>` and pass model.codebook=PATH")
    _, meta = check_image_codebook(model.codebook, model)
    norm = meta.get("normalization", {})
    mean, std = list(norm.get("mean", [])), list(norm.get("std", []))
    same = len(mean) == len(data.mean) == len(std) and np.allclose(mean, data.mean) and np.allclose(std, data.std)
    if not same:
        raise UserError(f"codebook {model.codebook} was fitted on inputs normalised with {norm}, but data.mean="
                        f"{list(data.mean)} and data.std={list(data.std)}; refit it with this data config")


def pretrain(cfg: DictConfig) -> TrainResult:
    """Run (or resume) image MAE pretraining as configured; see ``configs/image/pretrain.yaml``."""
    train_cfg, model_cfg, data_cfg = sections(cfg)
    urls = expand_shards(data_cfg.shards)

    def build(dist: DistInfo) -> tuple[ImageMAE, ShardStream, int, ImagePretrainTask]:
        samples = data_cfg.num_samples or dataset_size(urls)
        model = ImageMAE(model_cfg)
        stream = ShardStream(urls, ImageDecoder(data_cfg, train=True), batch_size=train_cfg.batch_size,
                             shuffle=data_cfg.shuffle, resampled=data_cfg.resampled, seed=train_cfg.seed,
                             rank=dist.rank, world=dist.world)
        figures = fixed_images(urls, ImageDecoder(data_cfg, train=False), 8) if dist.is_main else None
        return model, stream, samples, ImagePretrainTask(model_cfg, data_cfg, figures, figure_seed=train_cfg.seed)

    return run_pretraining(cfg, train_cfg, build, num_workers=data_cfg.num_workers, prefetch=data_cfg.prefetch)
