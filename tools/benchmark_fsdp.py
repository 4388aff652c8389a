"""DDP against FSDP for MAE pretraining: what each process holds, and train-step speed, in one torchrun launch.

    torchrun --standalone --nproc-per-node=2 tools/benchmark_fsdp.py [--model base] [--batch 8]
        [--precisions bf16,bf16-pure] [--steps 6] [--device auto]

For every precision it trains the same ViT MAE with mimx's engine twice,
``train.strategy=ddp`` then ``fsdp``, on random images, and prints per
process: the bytes of weights, master weights and AdamW state it keeps between
steps (counted from its own tensors: under FSDP the local shards), the peak
memory on a GPU (``max_memory_allocated``), and the samples per second of the
last half of the steps. Run it with 2+ processes (gloo on the CPU, nccl on GPUs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as tdist

from mimx.modalities.image.data import ImageDataConfig
from mimx.modalities.image.model import mae_vit
from mimx.modalities.image.pretrain import ImagePretrainTask
from mimx.train.distributed import init_distributed, shutdown
from mimx.train.engine import TrainConfig, Trainer


class RandomImages:
    """An endless stream of random image batches (the data side is not what is measured)."""

    def __init__(self, batch: int, size: int) -> None:
        self.batch = torch.randn(batch, 3, size, size)

    def __iter__(self):
        while True:
            yield {"image": self.batch}


def local_bytes(tensors) -> int:
    """Bytes this process stores for ``tensors`` (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def held_bytes(trainer: Trainer) -> dict[str, int]:
    """Weights the model holds, fp32 masters (bf16-pure without FSDP) and AdamW state, on this process."""
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {"weights": local_bytes(trainer.model.parameters()),
            "masters": local_bytes(trainer.precision.masters.values()),
            "adamw": local_bytes(state)}


def run(strategy: str, precision: str, args: argparse.Namespace, dist, run_dir: Path) -> dict:
    torch.manual_seed(0)
    model = mae_vit(args.model, img_size=args.image, patch_size=args.patch)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, precision=precision, device=args.device,
                      strategy=strategy, log_every=1, ckpt_every=0, figure_every=0, progress=False,
                      tensorboard=False, resume="never", warmup_steps=1)
    data = ImageDataConfig(image_size=args.image)
    loader = RandomImages(args.batch, args.image)
    trainer = Trainer(cfg, model, loader, ImagePretrainTask(model.config, data), run_dir / f"{strategy}-{precision}",
                      4096, dist)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    times: list[float] = []
    original = trainer.precision.step

    def timed_step(*a, **k):  # one optimiser step ends here: time between consecutive ends
        original(*a, **k)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        times.append(time.perf_counter())

    trainer.precision.step = timed_step
    trainer.fit()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)][len(times) // 2 - 1:]
    held = held_bytes(trainer)
    peak = torch.cuda.max_memory_allocated(trainer.device) if trainer.device.type == "cuda" else None
    return {"held": held, "peak": peak, "sps": args.batch * dist.world / statistics.median(gaps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="base")
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="per process")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precisions", default="bf16,bf16-pure")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    dist = init_distributed(args.device)
    if dist.world < 2:
        sys.exit("run it under torchrun with 2 or more processes: torchrun --nproc-per-node=2 " + sys.argv[0])
    mib = 2 ** 20
    with tempfile.TemporaryDirectory() as tmp:  # the run folders (checkpoints are written by the main process)
        rows = []
        for precision in args.precisions.split(","):
            found = {s: run(s, precision, args, dist, Path(tmp)) for s in ("ddp", "fsdp")}
            rows.append((precision, found))
            tdist.barrier()
    if dist.is_main:
        print(f"MAE vit_{args.model} {args.image}px/{args.patch}, {dist.world} processes x batch {args.batch}, "
              f"device {dist.device}; per process: weights + fp32 masters + AdamW state kept between steps")
        print(f"{'precision':<10} {'strategy':<8} {'weights':>9} {'masters':>9} {'AdamW':>9} {'total MiB':>10} "
              f"{'peak MiB':>9} {'samples/s':>10}")
        for precision, found in rows:
            for strategy, r in found.items():
                h = r["held"]
                peak = f"{r['peak'] / mib:9.0f}" if r["peak"] is not None else f"{'-':>9}"
                print(f"{precision:<10} {strategy:<8} {h['weights'] / mib:9.1f} {h['masters'] / mib:9.1f} "
                      f"{h['adamw'] / mib:9.1f} {sum(h.values()) / mib:10.1f} {peak} {r['sps']:10.2f}")
            ratio = sum(found["ddp"]["held"].values()) / max(1, sum(found["fsdp"]["held"].values()))
            speed = found["fsdp"]["sps"] / found["ddp"]["sps"]
            print(f"{precision:<10} FSDP keeps {ratio:.2f}x less than DDP; its speed is {speed:.2f}x DDP's")
    shutdown()


if __name__ == "__main__":
    main()
