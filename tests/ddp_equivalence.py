"""Helper for test_train.py: train a few steps, once as 1 process and once as 2 torchrun processes.

Every process count sees the same global batches of real MNIST sample images
(rank r takes slice r), so DDP with the same global batch must give the same
losses and weights as one process; so must gradient accumulation.
Usage: ddp_equivalence.py SAMPLES OUT PER_RANK_BATCH [ACCUM_STEPS]
"""

import sys
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
    samples, out, per_rank = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    accum = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    dist = init_distributed("cpu")
    data = ImageDataConfig(image_size=16)
    images = fixed_images(expand_shards(str(samples / "mnist")), ImageDecoder(data, train=False), 64)
    torch.manual_seed(0)
    model = mae_vit("tiny", img_size=16, patch_size=4, embed_dim=48, depth=2, num_heads=3, decoder_dim=32,
                    decoder_depth=1, decoder_heads=2)
    cfg = TrainConfig(steps=6, batch_size=per_rank, accum_steps=accum, precision="fp32", device="cpu", log_every=1,
                      ckpt_every=0, figure_every=0, progress=False, tensorboard=False, warmup_steps=1, base_lr=1e-3,
                      resume="never", clip_grad=1.0)
    run_dir = out.with_suffix("")
    loader = GlobalBatches(images, per_rank, dist.rank, dist.world)
    trainer = Trainer(cfg, model, loader, ImagePretrainTask(model.config, data), run_dir, 64, dist)
    trainer.fit()
    if dist.is_main:
        losses = torch.tensor([float(r["loss"]) for r in read_metrics(run_dir)])
        torch.save({"losses": losses, "model": model.state_dict()}, out)
    shutdown()


if __name__ == "__main__":
    main()
