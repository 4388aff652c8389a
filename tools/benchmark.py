"""Speed benchmarks: mimx against its peers, measured in the same run on the same machine.

    python tools/benchmark.py step   [--model base] [--batch 8] [--precisions fp32,bf16] [--device auto]
    python tools/benchmark.py loader [--shards data/samples/mnist] [--size 224] [--workers 1,2]
    python tools/benchmark.py peak

``step``: train-step throughput (forward, backward, AdamW) and peak memory of
mimx's MAE against transformers' ``ViTMAEForPreTraining`` with the same
weights, config and noise (the loss of both is printed to show they compute the
same thing). Each configuration runs in its own process so that peak memory
(``ru_maxrss`` on the CPU, ``max_memory_allocated`` on a GPU) is its own. It
also prints achieved FLOP/s against the machine's measured matmul peak.
``loader``: decoded + augmented images per second from shards, per worker count.
Results go in docs/benchmarks.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

PRESET_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16),
                "huge": (1280, 32, 16)}


# ----------------------------------------------------------------------------- helpers


def device_of(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """Measured FLOP/s of an ``n x n`` matmul (the machine's practical peak for that dtype)."""
    if device.type == "cuda":
        n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def hf_model(preset: str, image: int, patch: int, mask_ratio: float, norm_pix: bool, seed: int = 0):
    """A transformers ViTMAE (random init, MAE sin-cos tables filled as a pretrained checkpoint holds them)."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    width, depth, heads = PRESET_SIZES[preset]
    cfg = ViTMAEConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                       intermediate_size=4 * width, image_size=image, patch_size=patch, mask_ratio=mask_ratio,
                       norm_pix_loss=norm_pix, layer_norm_eps=1e-6)
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(cfg)
    grid = image // patch
    with torch.no_grad():
        for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
            d = table.shape[-1]
            t = build_2d_sinusoidal_position_embedding(grid, grid, d, cls_token=True)
            table.copy_(torch.cat([t[:, d // 2:], t[:, : d // 2]], dim=1)[None])
    return model


# ----------------------------------------------------------------------------- one measured configuration


def measure_step(args: argparse.Namespace) -> dict:
    """Runs in a child process: time ``steps`` train steps of one implementation at one precision."""
    from mimx.modalities.image.interop import from_transformers

    device = device_of(args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    hf = hf_model(args.model, args.image, args.patch, args.mask_ratio, True)
    model = hf if args.impl == "transformers" else from_transformers(hf)
    del hf
    model = model.to(device).train()
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    grid = args.image // args.patch
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=gen, device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def step(noise: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if args.impl == "transformers":
                loss = model(pixel_values=x, noise=noise).loss
            else:
                loss = model(x, noise=noise).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    first_noise = torch.rand(args.batch, grid * grid, generator=torch.Generator().manual_seed(1)).to(device)
    first_loss = float(step(first_noise))  # same weights + noise for both implementations
    for _ in range(args.warmup):
        step(torch.rand(args.batch, grid * grid, generator=gen, device=device))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps):
        step(torch.rand(args.batch, grid * grid, generator=gen, device=device))
    sync(device)
    elapsed = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"impl": args.impl, "precision": args.precision, "samples_per_s": args.batch * args.steps / elapsed,
            "step_s": elapsed / args.steps, "peak_bytes": peak, "first_loss": first_loss}


def step_flops(args: argparse.Namespace) -> float:
    """FLOPs of one forward + backward of the MAE at this config (counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mimx.modalities.image import mae_vit

    model = mae_vit(args.model, img_size=args.image, patch_size=args.patch,
                    masking={"kind": "random", "ratio": args.mask_ratio})
    x = torch.randn(args.batch, 3, args.image, args.image)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, generator=torch.Generator().manual_seed(0)).loss.backward()
    return float(counter.get_total_flops())


def run_child(args: argparse.Namespace, impl: str, precision: str) -> dict:
    cmd = [sys.executable, __file__, "_step", "--impl", impl, "--precision", precision, "--model", args.model,
           "--batch", str(args.batch), "--image", str(args.image), "--patch", str(args.patch),
           "--mask-ratio", str(args.mask_ratio), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device, "--threads", str(args.threads or 0)]
    if args.compile:
        cmd.append("--compile")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} {precision} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- commands


def cmd_step(args: argparse.Namespace) -> None:
    device = device_of(args.device)
    print(f"# train step: MAE ViT-{args.model[0].upper()}/{args.patch}, {args.image}px, batch {args.batch}, "
          f"mask {args.mask_ratio}, {args.steps} timed steps after {args.warmup} warm-up, device {device}, "
          f"threads {args.threads or torch.get_num_threads()}")
    flops = step_flops(args)
    peaks = {p: matmul_peak({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[p], device)
             for p in args.precisions}
    rows = []
    for precision in args.precisions:
        for impl in args.impls:
            r = run_child(args, impl, precision)
            r["tflops"] = flops / r["step_s"] / 1e12
            r["of_peak"] = flops / r["step_s"] / peaks[precision]
            rows.append(r)
    print("| implementation | precision | samples/s | step (s) | peak memory (GiB) | TFLOP/s | of matmul peak | "
          "first loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['precision']} | {r['samples_per_s']:.2f} | {r['step_s']:.3f} | "
              f"{r['peak_bytes'] / 2**30:.2f} | {r['tflops']:.3f} | {100 * r['of_peak']:.0f}% | "
              f"{r['first_loss']:.6f} |")
    print(f"\nstep FLOPs (forward + backward): {flops / 1e9:.1f} GFLOP; matmul peak: " +
          ", ".join(f"{p} {v / 1e12:.3f} TFLOP/s" for p, v in peaks.items()))
    best = {impl: max(r["samples_per_s"] for r in rows if r["impl"] == impl) for impl in args.impls}
    if "mimx" in best and "transformers" in best:
        print(f"mimx best / transformers best: {best['mimx'] / best['transformers']:.2f}x")
        for precision in args.precisions:
            pair = {r["impl"]: r for r in rows if r["precision"] == precision}
            if len(pair) == 2:
                mine, peer = pair["mimx"], pair["transformers"]
                print(f"  {precision}: mimx / transformers {mine['samples_per_s'] / peer['samples_per_s']:.2f}x "
                      f"speed, {mine['peak_bytes'] / peer['peak_bytes']:.2f}x memory")


def cmd_loader(args: argparse.Namespace) -> None:
    from mimx.data.shards import expand_shards
    from mimx.data.stream import ShardStream, StreamLoader
    from mimx.modalities.image.data import ImageDataConfig, ImageDecoder

    cfg = ImageDataConfig(image_size=args.size)
    urls = expand_shards(args.shards)
    print(f"# loader: {args.shards} ({len(urls)} shards), RandomResizedCrop {args.size} + flip, batch {args.batch}")
    print("| workers | images/s | images/s per worker |")
    print("|---|---|---|")
    for workers in args.workers:
        stream = ShardStream(urls, ImageDecoder(cfg), batch_size=args.batch, shuffle=256, resampled=True)
        it = iter(StreamLoader(stream, num_workers=workers, prefetch_factor=4))
        for _ in range(max(2, workers * 2)):
            next(it)
        t = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        rate = args.batch * args.batches / (time.perf_counter() - t)
        print(f"| {workers} | {rate:.0f} | {rate / max(1, workers):.0f} |")


def cmd_peak(args: argparse.Namespace) -> None:
    device = device_of(args.device)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        print(f"{name} matmul: {matmul_peak(dtype, device) / 1e12:.3f} TFLOP/s on {device}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("step", "_step"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="base", choices=list(PRESET_SIZES))
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--image", type=int, default=224)
        p.add_argument("--patch", type=int, default=16)
        p.add_argument("--mask-ratio", type=float, default=0.75)
        p.add_argument("--steps", type=int, default=5)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--device", default="auto")
        p.add_argument("--threads", type=int, default=0)
        p.add_argument("--compile", action="store_true")
        if name == "step":
            p.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "bf16"])
            p.add_argument("--impls", type=lambda s: s.split(","), default=["mimx", "transformers"])
        else:
            p.add_argument("--impl", required=True)
            p.add_argument("--precision", required=True)
    p = sub.add_parser("loader")
    p.add_argument("--shards", default="data/samples/mnist")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[0, 1, 2])
    p = sub.add_parser("peak")
    p.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.cmd == "_step":
        print(json.dumps(measure_step(args)))
    else:
        {"step": cmd_step, "loader": cmd_loader, "peak": cmd_peak}[args.cmd](args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
