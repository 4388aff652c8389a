"""Helper for test_train.py: train a few steps, once as 1 process and once as 2 torchrun processes.

Every process count sees the same global batches of real MNIST sample images
(rank r takes slice r), so DDP or FSDP with the same global batch must give the
same losses and weights as one process; so must gradient accumulation.
Usage: ddp_equivalence.py SAMPLES OUT PER_RANK_BATCH [--accum N] [--strategy S] [--stop-at K] [--run-dir D]
(with --run-dir the run resumes from D's last checkpoint, whichever strategy wrote it).
"""

import argparse
from pathlib import Path

import torch

from mimx.data.shards import expand_shards
from mimx.modalities.image.data import ImageDataConfig, ImageDecoder
from mimx.modalities.image.model import mae_vit
from mimx.modalities.image.pretrain import ImagePretrainTask, fixed_images
from mimx.train.distributed import init_distributed, shutdown
from mimx.train.engine import TrainConfig, Trainer
from mimx.train.metrics import read_metrics


class GlobalBatches:
    """Rank ``r`` of ``world`` gets slice ``r`` of global batch ``i``, whatever the process count."""

    def __init__(self, images: torch.Tensor, per_rank: int, rank: int, world: int) -> None:
        self.images, self.per_rank, self.rank, self.world = images, per_rank, rank, world
        self.position = 0

    def __iter__(self):
        size = self.per_rank * self.world
        while True:
            start = (self.position * size) % len(self.images)
            chunk = self.images[start : start + size]
            self.position += 1
            yield {"image": chunk[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("samples", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("per_rank", type=int)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--stop-at", type=int, default=None)
    parser.add_argument("--run-dir", type=Path, default=None)
    args = parser.parse_args()
    samples, out, per_rank = args.samples, args.out, args.per_rank
    dist = init_distributed("cpu")
    data = ImageDataConfig(image_size=16)
    images = fixed_images(expand_shards(str(samples / "mnist")), ImageDecoder(data, train=False), 64)
    torch.manual_seed(0)
    model = mae_vit("tiny", img_size=16, patch_size=4, embed_dim=48, depth=2, num_heads=3, decoder_dim=32,
                    decoder_depth=1, decoder_heads=2)
    cfg = TrainConfig(steps=6, batch_size=per_rank, accum_steps=args.accum, precision="fp32", device="cpu",
                      log_every=1, ckpt_every=0, figure_every=0, progress=False, tensorboard=False, warmup_steps=1,
                      base_lr=1e-3, resume="never" if args.run_dir is None else "auto", clip_grad=1.0,
                      strategy=args.strategy, stop_at_step=args.stop_at)
    run_dir = args.run_dir or out.with_suffix("")
    loader = GlobalBatches(images, per_rank, dist.rank, dist.world)
    trainer = Trainer(cfg, model, loader, ImagePretrainTask(model.config, data), run_dir, 64, dist)
    trainer.fit()
    if dist.is_main:
        losses = torch.tensor([float(r["loss"]) for r in read_metrics(run_dir)])
        state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        torch.save({"losses": losses, "model": state["model"], "optimizer": state["optimizer"]}, out)
    shutdown()


if __name__ == "__main__":
    main()
