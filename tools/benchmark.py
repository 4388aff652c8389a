"""Speed benchmarks: mimx against its peers, measured in the same run on the same machine.

    python tools/benchmark.py step   [--model base] [--batch 8] [--precisions fp32,bf16] [--device auto]
    python tools/benchmark.py step   --modality video [--model small] [--batch 2] [--frames 16]
    python tools/benchmark.py step   ... --paired 16    # then the two best, alternating steps in one process
    python tools/benchmark.py loader [--shards data/samples/mnist] [--size 224] [--workers 1,2]
    python tools/benchmark.py video-loader [--shards data/samples/video_clips] [--backends decord,pyav,torchcodec]
    python tools/benchmark.py peak
    python tools/benchmark.py rel-pos [--method beit|mae] [--model base] [--batch 8]
    python tools/benchmark.py point-ops [--clouds 32] [--points 1024] [--centres 64] [--k 32] [--threads 2]
    python tools/benchmark.py point-step [--model small] [--batch 32] [--precisions fp32,bf16]
    python tools/benchmark.py multimodal-step [--model tiny] [--image 64] [--patch 8] [--batch 32]

``step``: train-step throughput (forward, backward, AdamW) and peak memory of
mimx's MAE against transformers' ``ViTMAEForPreTraining`` with the same
weights, config and noise (the loss of both is printed to show they compute the
same thing); with ``--modality video`` mimx's VideoMAE (also with v2 dual
masking, ``mimx-dual``) against ``VideoMAEForPreTraining`` with the same weights
and tube mask. Each configuration runs in its own process so that peak memory
(``ru_maxrss`` on the CPU, ``max_memory_allocated`` on a GPU) is its own. It
also prints achieved FLOP/s against the machine's measured matmul peak.
``loader``: decoded + augmented images per second from shards, per worker count;
``video-loader``: decoded + cropped clips per second per decoder backend and worker count.
``point-ops``: milliseconds per call of farthest point sampling, kNN and Chamfer-L2 forward + backward for
each available backend of ``mimx.modalities.points.ops``, against naive peers (``cdist`` + ``topk`` kNN, and
a Chamfer distance with autograd through the full ``cdist`` matrix).
``point-step``: Point-MAE train steps per second per precision and ops backend, and the part of it spent
grouping (FPS + kNN). No installable peer exists (the reference needs custom CUDA extensions).
``multimodal-step``: MultiMAE on RGB + depth + segmentation against mimx's image MAE on one image with the
same total token count, visible count, encoder and decoder width, fp32 and bf16.
``rel-pos``: a train step with BEiT's shared relative position bias (and no absolute positions) against the
same model with fixed sin-cos positions, alternating in one process.
``--paired N`` then builds mimx's best configuration and the peers' best side by side in one process
and times N steps of each in turn: on a shared machine whose speed drifts between processes, the
median of those per-step ratios is the comparison to trust.
``paired --pair impl:precision[:compiled],...``: the same for any set of configurations, eager or under
``torch.compile`` (e.g. each side's best with and without compiling), every mimx one against every peer.
Results go in docs/benchmarks.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
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

    from mimx.pos_embed import sincos_grid  # equal to transformers' table (tests/test_pos_embed.py), any version

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
            table.copy_(torch.cat([torch.zeros(1, d), sincos_grid((grid, grid), d)])[None])
    return model


# ----------------------------------------------------------------------------- one measured configuration


VIDEO_DECODERS = {"tiny": (192, 3), "small": (192, 3), "base": (384, 6), "large": (512, 8), "huge": (640, 8)}


def hf_video_model(preset: str, image: int, patch: int, frames: int, tubelet: int, seed: int = 0):
    """A transformers VideoMAEForPreTraining (random init) with VideoMAE's decoder for the preset."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    width, depth, heads = PRESET_SIZES[preset]
    dec_width, dec_heads = VIDEO_DECODERS[preset]
    cfg = VideoMAEConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                         intermediate_size=4 * width, image_size=image, patch_size=patch, num_frames=frames,
                         tubelet_size=tubelet, decoder_hidden_size=dec_width, decoder_num_attention_heads=dec_heads,
                         decoder_intermediate_size=4 * dec_width, decoder_num_hidden_layers=4, norm_pix_loss=True)
    if not hasattr(cfg, "qv_bias"):  # transformers 5.17 renamed the config field but its model still reads qv_bias
        cfg.qv_bias = cfg.qkv_bias
    torch.manual_seed(seed)
    return VideoMAEForPreTraining(cfg)


def build_step(args: argparse.Namespace) -> tuple:
    """``(step, new_input, first_input)`` of ``args.impl`` at ``args.precision`` (image or video)."""
    if args.modality == "video":
        return build_video_step(args)
    return build_image_step(args)


def child_device(args: argparse.Namespace) -> torch.device:
    """A measuring child's device, with the same allocator and thread count for every implementation."""
    from mimx.train.allocator import tune_cpu_allocator

    device = device_of(args.device)
    tune_cpu_allocator(args.cpu_allocator, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def step_seconds(step, x, device: torch.device) -> float:
    """Wall time of one ``step(x)``, the device synchronised on both sides."""
    sync(device)
    t = time.perf_counter()
    step(x)
    sync(device)
    return time.perf_counter() - t


def measure_step(args: argparse.Namespace) -> dict:
    device = child_device(args)
    return timed_steps(args, *build_step(args), device)


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """``impl:precision`` or ``impl:precision:compiled`` (that one under ``torch.compile``)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "compiled"):
        raise SystemExit(f"--pair entry {spec!r}: write impl:precision or impl:precision:compiled")
    return parts[0], parts[1], len(parts) == 3


def measure_paired(args: argparse.Namespace) -> dict:
    """Runs in a child process: the configurations built side by side, timed one step each in turn.

    On a shared machine whose speed drifts by tens of percent over minutes,
    configurations measured in separate processes meet different machines; two
    steps taken back to back meet the same one, so the median of the per-round
    ratios is the robust comparison.
    """
    device = child_device(args)
    built, first_losses = [], []
    for spec in args.pair:
        impl, precision, compiled = parse_spec(spec)
        one = argparse.Namespace(**{**vars(args), "impl": impl, "precision": precision,
                                    "compile": compiled or args.compile})
        step, new_input, first_input = build_step(one)
        first_losses.append(float(step(first_input)))
        built.append((step, new_input))
    for step, new_input in built:
        for _ in range(args.warmup):
            step(new_input())
    times: list[list[float]] = [[] for _ in built]
    for r in range(args.steps):
        order = range(len(built)) if r % 2 == 0 else reversed(range(len(built)))  # no side always goes first
        for i in order:
            step, new_input = built[i]
            times[i].append(step_seconds(step, new_input(), device))
    return {"pair": args.pair, "times": times, "first_loss": first_losses}


def timed_steps(args: argparse.Namespace, step, new_noise, first_noise, device: torch.device) -> dict:
    """Warm up, then time ``args.steps`` steps; the first step's loss shows that both compute the same thing."""
    first_loss = float(step(first_noise))  # same weights + noise for every implementation
    for _ in range(args.warmup):
        step(new_noise())
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # the median step resists the noise of a shared machine
    step_s = statistics.median(step_seconds(step, new_noise(), device) for _ in range(args.steps))
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"impl": args.impl, "precision": args.precision, "samples_per_s": args.batch / step_s,
            "step_s": step_s, "peak_bytes": peak, "first_loss": first_loss}


def mimx_step(model, args: argparse.Namespace, device: torch.device, x: torch.Tensor, call):
    """The training engine's hot path: Precision, fused AdamW, its attention choice."""
    from mimx.train.optim import build_adamw, param_groups
    from mimx.train.precision import Precision
    from mimx.transformer import set_fused_attention

    model = model.to(device).train()
    precision = Precision(args.precision, device)
    set_fused_attention(model, precision.prefers_fused_attention())  # the engine's auto rule
    groups = param_groups(model, 0.05)
    precision.attach(model)
    optimizer = build_adamw(precision.optimizer_groups(groups), 1e-4, (0.9, 0.95), device)
    fwd = torch.compile(model, mode=args.compile_mode) if args.compile else model
    xin = x.to(precision.input_dtype)

    def step(noise: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            loss = call(fwd, xin, noise)
        precision.backward(loss)
        precision.step(optimizer, model, None)
        return loss.detach()

    return step


def peer_step(model, args: argparse.Namespace, device: torch.device, call):
    """transformers' model in a plain autocast loop with its own attention implementation."""
    attn = args.impl.split("-", 1)[1] if "-" in args.impl else "sdpa"
    model.config._attn_implementation = attn
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    fwd = torch.compile(model, mode=args.compile_mode) if args.compile else model
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def step(noise: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = call(fwd, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def build_video_step(args: argparse.Namespace) -> tuple:
    """VideoMAE train steps (tube masking) of one implementation at one precision."""
    from mimx.masking import Mask, RunningCellDecoding, tube_mask
    from mimx.modalities.video.interop import from_transformers

    device = device_of(args.device)
    hf = hf_video_model(args.model, args.image, args.patch, args.frames, args.tubelet)
    grid = (args.frames // args.tubelet, args.image // args.patch, args.image // args.patch)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.batch, 3, args.frames, args.image, args.image, generator=gen, device=device)

    def masks(seed_gen: torch.Generator) -> torch.Tensor:
        return tube_mask(args.batch, grid[0], grid[1] * grid[2], args.mask_ratio, generator=seed_gen).mask.to(device)

    if args.impl.startswith("mimx"):
        model = from_transformers(hf)
        if args.impl == "mimx-dual":  # VideoMAE v2: the decoder rebuilds half of the hidden tubelets
            model.decode_subset = RunningCellDecoding(0.5)
        # as its tube masking does in training: the exact visible count is known, so nothing is read back
        drawn = masks(torch.Generator().manual_seed(0))
        visible = drawn.shape[1] - int(drawn[0].sum())
        step = mimx_step(model, args, device, x,
                         lambda fwd, xin, mask: fwd(xin, mask=Mask.from_bool(mask, num_visible=visible)).loss)
    else:
        frames_first = x.transpose(1, 2).contiguous()  # transformers takes [B, T, C, H, W]
        step = peer_step(hf, args, device,
                         lambda fwd, mask: fwd(pixel_values=frames_first, bool_masked_pos=mask).loss)
    del hf
    cpu_gen = torch.Generator().manual_seed(2)
    return step, lambda: masks(cpu_gen), masks(torch.Generator().manual_seed(1))


def build_image_step(args: argparse.Namespace) -> tuple:
    """MAE train steps of one implementation at one precision.

    mimx runs its training engine's hot path (``Precision``, fused AdamW,
    attention switch); transformers runs a plain autocast loop with its
    attention implementation (``sdpa`` or ``eager``).
    """
    from mimx.modalities.image.interop import from_transformers

    device = device_of(args.device)
    hf = hf_model(args.model, args.image, args.patch, args.mask_ratio, True)
    grid = args.image // args.patch
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=gen, device=device)
    if args.impl == "mimx":
        step = mimx_step(from_transformers(hf), args, device, x, lambda fwd, xin, noise: fwd(xin, noise=noise).loss)
    else:
        step = peer_step(hf, args, device, lambda fwd, noise: fwd(pixel_values=x, noise=noise).loss)
    del hf
    first_noise = torch.rand(args.batch, grid * grid, generator=torch.Generator().manual_seed(1)).to(device)
    return step, lambda: torch.rand(args.batch, grid * grid, generator=gen, device=device), first_noise


def step_flops(args: argparse.Namespace) -> float:
    """FLOPs of one forward + backward of the MAE at this config (counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mimx.modalities.image import mae_vit
    from mimx.modalities.video.model import videomae_vit
    from mimx.transformer import set_fused_attention

    if args.modality == "video":
        model = videomae_vit(args.model, img_size=args.image, patch_size=args.patch, num_frames=args.frames,
                             tubelet_size=args.tubelet, masking={"kind": "tube", "ratio": args.mask_ratio})
        x = torch.randn(args.batch, 3, args.frames, args.image, args.image)
    else:
        model = mae_vit(args.model, img_size=args.image, patch_size=args.patch,
                        masking={"kind": "random", "ratio": args.mask_ratio})
        x = torch.randn(args.batch, 3, args.image, args.image)
    # explicit matmul + softmax attention: the counter has no formula for the CPU fused attention kernel and
    # would leave attention's matmuls (a third of a VideoMAE step) out
    set_fused_attention(model, False)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, generator=torch.Generator().manual_seed(0)).loss.backward()
    return float(counter.get_total_flops())


def run_child(args: argparse.Namespace, what: list[str], steps: int) -> dict:
    """One measurement in its own process: ``what`` is ``["_step", "--impl", ...]`` or ``["_paired", ...]``."""
    cmd = [sys.executable, __file__, *what, "--model", args.model,
           "--batch", str(args.batch), "--image", str(args.image), "--patch", str(args.patch),
           "--mask-ratio", str(args.mask_ratio), "--steps", str(steps), "--warmup", str(args.warmup),
           "--device", args.device, "--threads", str(args.threads or 0), "--modality", args.modality,
           "--frames", str(args.frames), "--tubelet", str(args.tubelet), "--cpu-allocator", args.cpu_allocator]
    if args.compile:
        cmd.append("--compile")
    cmd += ["--compile-mode", args.compile_mode]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(what)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio_quartiles(t_mine: list[float], t_peer: list[float]) -> list[float]:
    """Quartiles of the per-round speed ratios ``t_peer / t_mine`` (the middle one is the median)."""
    ratios = sorted(b / a for a, b in zip(t_mine, t_peer, strict=True))
    return statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3


def report_paired(args: argparse.Namespace, mine: dict, peer: dict) -> None:
    """Alternate steps of the two best configurations in one process; print the median per-round ratio."""
    pair = [f"{mine['impl']}:{mine['precision']}", f"{peer['impl']}:{peer['precision']}"]
    r = run_child(args, ["_paired", "--pair", ",".join(pair)], args.paired)
    t_mine, t_peer = r["times"]
    quart = ratio_quartiles(t_mine, t_peer)
    print(f"paired, one process, {args.paired} alternating steps each: {pair[0]} "
          f"{args.batch / statistics.median(t_mine):.2f} samples/s, {pair[1]} "
          f"{args.batch / statistics.median(t_peer):.2f} samples/s; per-step ratio median "
          f"{quart[1]:.2f}x (quartiles {quart[0]:.2f}-{quart[2]:.2f}x); first losses "
          + " / ".join(f"{v:.6f}" for v in r["first_loss"]))


def cmd_paired(args: argparse.Namespace) -> None:
    """Any set of configurations (``--pair``, eager or compiled) in one process, timed one step each in turn;
    every mimx configuration against every peer by the median per-round ratio."""
    for spec in args.pair:
        parse_spec(spec)
    r = run_child(args, ["_paired", "--pair", ",".join(args.pair)], args.steps)
    print(f"# paired, one process, {args.steps} alternating steps each after {args.warmup} warm-up; "
          f"{args.modality} {args.model}, batch {args.batch}, mask {args.mask_ratio}")
    print("| configuration | samples/s (median) | first loss |\n|---|---|---|")
    for spec, times, loss in zip(args.pair, r["times"], r["first_loss"], strict=True):
        print(f"| {spec} | {args.batch / statistics.median(times):.2f} | {loss:.6f} |")
    named = list(zip(args.pair, r["times"], strict=True))
    for mine, t_mine in (x for x in named if x[0].startswith("mimx")):
        for peer, t_peer in (x for x in named if not x[0].startswith("mimx")):
            quart = ratio_quartiles(t_mine, t_peer)
            print(f"{mine} / {peer}: {quart[1]:.2f}x (quartiles {quart[0]:.2f}-{quart[2]:.2f}x)")


# ----------------------------------------------------------------------------- commands


def cmd_step(args: argparse.Namespace) -> None:
    device = device_of(args.device)
    what = (f"VideoMAE ViT-{args.model[0].upper()}/{args.patch}, {args.frames}x{args.image}px, tubelet "
            f"{args.tubelet}, tube" if args.modality == "video" else
            f"MAE ViT-{args.model[0].upper()}/{args.patch}, {args.image}px, random")
    print(f"# train step: {what} mask {args.mask_ratio}, batch {args.batch}, median of {args.steps} timed steps "
          f"after {args.warmup} warm-up, best of "
          f"{args.repeats} interleaved round(s), device {device}, "
          f"threads {args.threads or torch.get_num_threads()}, CPU allocator {args.cpu_allocator} for all")
    flops = step_flops(args)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    peaks = {p: matmul_peak(dtypes[p], device) for p in {q.replace("-pure", "") for q in args.precisions}}
    peer_precisions = [q for q in args.precisions if q != "bf16-pure"]
    mimx_impls = ["mimx", "mimx-dual"] if args.modality == "video" else ["mimx"]
    configs = [(impl, q) for impl in mimx_impls for q in args.precisions]
    configs += [(impl, q) for impl in args.peers for q in peer_precisions]
    best: dict[tuple[str, str], dict] = {}
    for repeat in range(args.repeats):  # interleaved rounds; each configuration keeps its best round
        for impl, precision in configs:
            r = run_child(args, ["_step", "--impl", impl, "--precision", precision], args.steps)
            print(f"  round {repeat + 1}: {impl} {precision}: {r['samples_per_s']:.2f} samples/s", file=sys.stderr)
            key = (impl, precision)
            if key not in best or r["samples_per_s"] > best[key]["samples_per_s"]:
                best[key] = r
    rows = []
    for key in configs:
        r = best[key]
        peak_key = "bf16" if r["precision"].startswith("bf16") else r["precision"]
        r["tflops"] = flops / r["step_s"] / 1e12
        r["of_peak"] = flops / r["step_s"] / peaks[peak_key]
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
    mimx_best = max((r for r in rows if r["impl"] == "mimx"), key=lambda r: r["samples_per_s"])
    peer_rows = [r for r in rows if not r["impl"].startswith("mimx")]
    if peer_rows:
        peer_best = max(peer_rows, key=lambda r: r["samples_per_s"])
        print(f"mimx best ({mimx_best['precision']}) / transformers best ({peer_best['impl']} "
              f"{peer_best['precision']}): {mimx_best['samples_per_s'] / peer_best['samples_per_s']:.2f}x speed, "
              f"{mimx_best['peak_bytes'] / peer_best['peak_bytes']:.2f}x peak memory")
        for precision in peer_precisions:
            mine = next(r for r in rows if r["impl"] == "mimx" and r["precision"] == precision)
            peer = max((r for r in peer_rows if r["precision"] == precision), key=lambda r: r["samples_per_s"])
            print(f"  {precision}: mimx / best transformers {mine['samples_per_s'] / peer['samples_per_s']:.2f}x")
        if args.paired:
            report_paired(args, mimx_best, peer_best)
        dual = [r for r in rows if r["impl"] == "mimx-dual"]
        if dual:
            best_dual = max(dual, key=lambda r: r["samples_per_s"])
            print(f"mimx with dual masking, best ({best_dual['precision']}) / transformers best: "
                  f"{best_dual['samples_per_s'] / peer_best['samples_per_s']:.2f}x speed")


def loader_rate(stream, workers: int, batches: int, prefetch: int) -> float:
    """Batches per second from a :class:`StreamLoader` after its workers have warmed up."""
    from mimx.data.stream import StreamLoader

    it = iter(StreamLoader(stream, num_workers=workers, prefetch_factor=prefetch))
    for _ in range(max(2, workers * 2)):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t)


def cmd_loader(args: argparse.Namespace) -> None:
    from mimx.data.shards import expand_shards
    from mimx.data.stream import ShardStream
    from mimx.modalities.image.data import ImageDataConfig, ImageDecoder

    cfg = ImageDataConfig(image_size=args.size)
    urls = expand_shards(args.shards)
    print(f"# loader: {args.shards} ({len(urls)} shards), RandomResizedCrop {args.size} + flip, batch {args.batch}")
    print("| workers | images/s | images/s per worker |")
    print("|---|---|---|")
    for workers in args.workers:
        stream = ShardStream(urls, ImageDecoder(cfg), batch_size=args.batch, shuffle=256, resampled=True)
        rate = args.batch * loader_rate(stream, workers, args.batches, prefetch=4)
        print(f"| {workers} | {rate:.0f} | {rate / max(1, workers):.0f} |")


def cmd_video_loader(args: argparse.Namespace) -> None:
    from mimx.config import UserError
    from mimx.data.shards import expand_shards
    from mimx.data.stream import ShardStream
    from mimx.modalities.video.data import VideoDataConfig, VideoDecoder
    from mimx.modalities.video.io import check_backend

    urls = expand_shards(args.shards)
    print(f"# video loader: {args.shards} ({len(urls)} shards), {args.frames} frames every {args.rate}, "
          f"RandomResizedCrop {args.size} + flip, {args.clips} clip(s) per decoded video, batch {args.batch}")
    print("| backend | workers | clips/s | clips/s per worker |")
    print("|---|---|---|---|")
    for backend in args.backends:
        try:
            check_backend(backend)
        except UserError as exc:
            print(f"| {backend} | not measured: {exc} | | |")
            continue
        cfg = VideoDataConfig(image_size=args.size, clip_len=args.frames, rate=args.rate, backend=backend,
                              clips_per_video=args.clips)
        for workers in args.workers:
            stream = ShardStream(urls, VideoDecoder(cfg), batch_size=args.batch, shuffle=16, resampled=True)
            rate = args.batch * args.clips * loader_rate(stream, workers, args.batches, prefetch=2)
            print(f"| {backend} | {workers} | {rate:.1f} | {rate / max(1, workers):.1f} |")


def median_ms(fn, device: torch.device, repeats: int) -> float:
    """Median milliseconds per call of ``fn`` over ``repeats`` timed calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def naive_chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Chamfer-L2 as usually written in plain torch: autograd through the whole [B, N, M] distance matrix."""
    d = torch.cdist(a, b).square()
    return (d.amin(2).mean(1) + d.amin(1).mean(1)).mean()


def cmd_point_ops(args: argparse.Namespace) -> None:
    from mimx.modalities.points import ops

    device = device_of(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator(device=device).manual_seed(0)
    points = torch.randn(args.clouds, args.points, 3, generator=gen, device=device)
    target = torch.randn(args.clouds, args.points, 3, generator=gen, device=device)
    centres = ops.farthest_point_sample(points, args.centres, backend="torch")[0]
    pred = points.clone().requires_grad_()

    def chamfer_step(loss_fn) -> float:
        pred.grad = None
        loss = loss_fn(pred, target)
        loss.backward()
        return float(loss.detach())

    def mimx_rows(backend: str) -> list[tuple[str, str, float]]:
        return [("farthest point sample", backend, median_ms(
                    lambda: ops.farthest_point_sample(points, args.centres, backend=backend), device, args.repeats)),
                ("kNN", backend, median_ms(lambda: ops.knn(centres, points, args.k, backend=backend), device,
                                           args.repeats)),
                ("Chamfer-L2 forward + backward", backend, median_ms(
                    lambda: chamfer_step(lambda a, b: ops.chamfer_distance(a, b, backend=backend)), device,
                    args.repeats))]

    backends = ["torch"] + (["pytorch3d"] if ops.has_pytorch3d() else [])
    print(f"# point ops: {args.clouds} clouds x {args.points} points, {args.centres} centres, k {args.k}; "
          f"ms per call, median of {args.repeats} after 1 warm-up; device {device}, "
          f"threads {args.threads or torch.get_num_threads()}; backends: {', '.join(backends)}")
    rows = [row for backend in backends for row in mimx_rows(backend)]
    rows.append(("kNN", "naive (cdist + topk)", median_ms(
        lambda: torch.cdist(centres, points).topk(args.k, dim=-1, largest=False), device, args.repeats)))
    rows.append(("Chamfer-L2 forward + backward", "naive (cdist autograd)",
                 median_ms(lambda: chamfer_step(naive_chamfer), device, args.repeats)))
    naive = {op: ms for op, impl, ms in rows if impl.startswith("naive")}
    print("| op | implementation | ms per call | / naive |")
    print("|---|---|---|---|")
    for op, impl, ms in rows:
        ratio = f"{ms / naive[op]:.2f}x" if op in naive else "—"
        print(f"| {op} | {impl if impl.startswith('naive') else 'mimx ' + impl} | {ms:.2f} | {ratio} |")
    mine, peer = chamfer_step(lambda a, b: ops.chamfer_distance(a, b, backend="torch")), chamfer_step(naive_chamfer)
    print(f"\nChamfer-L2 value: mimx torch {mine:.6f}, naive {peer:.6f}")


def conv_hog(x: torch.Tensor, cell: int = 8, bins: int = 9, window: int = 16) -> torch.Tensor:
    """HOG cells as MaskFeat's reference code structures it: a one-channel 3x3 Sobel convolution, a
    ``[BC, bins, H, W]`` per-pixel histogram filled by scatter, cell sums by unfolding."""
    b, c, h, w = x.shape
    sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device)
    planes = torch.nn.functional.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="reflect")
    gx = torch.nn.functional.conv2d(planes, sobel.view(1, 1, 3, 3))
    gy = torch.nn.functional.conv2d(planes, sobel.t().reshape(1, 1, 3, 3))
    n = torch.arange(window, dtype=torch.float32, device=x.device)
    g = torch.exp(-0.5 * ((n - n.mean()) / (window / 2)) ** 2)
    kernel = (g[:, None] * g[None, :]) / (g[:, None] * g[None, :]).sum()
    magnitude = torch.hypot(gx, gy) * kernel.repeat(h // window, w // window)
    phase = torch.atan2(gx, gy) / math.pi * bins
    hist = torch.zeros(b * c, bins, h, w, device=x.device).scatter_add_(1, phase.floor().long() % bins, magnitude)
    hist = hist.unfold(2, cell, cell).unfold(3, cell, cell).sum((-1, -2))
    return torch.nn.functional.normalize(hist.view(b, c, bins, h // cell, w // cell), dim=2)


def cmd_hog(args: argparse.Namespace) -> None:
    """MaskFeat's HOG target: mimx's ``hog_cells`` against the reference code's formulation, same input."""
    from mimx.targets import hog_cells

    device = device_of(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=torch.Generator().manual_seed(0)).to(device)
    ms = {"mimx": median_ms(lambda: hog_cells(x, 8, 9, 16), device, args.repeats),
          "reference formulation": median_ms(lambda: conv_hog(x), device, args.repeats)}
    diff = (hog_cells(x, 8, 9, 16) - conv_hog(x)).abs()
    print(f"# HOG target (8-px cells, 9 bins, 16-px Gaussian window) of {args.batch} x 3 x {args.image}^2 images; "
          f"ms per call, median of {args.repeats}; device {device}, threads {torch.get_num_threads()}")
    print("| implementation | ms per call |\n|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} |")
    print(f"\nmimx / reference formulation: {ms['reference formulation'] / ms['mimx']:.2f}x speed; values differ by "
          f"at most {diff.max():.1e} ({int((diff > 1e-4).sum())} of {diff.numel()} above 1e-4: float32 rounding "
          "moves a few votes across a bin border)")


def cmd_tokens(args: argparse.Namespace) -> None:
    """BEiT-style token target: mimx's chunked fp32 nearest-code lookup against ``cdist`` + ``argmin``, same input."""
    from mimx.codebook import nearest_code

    device = device_of(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    width = args.patch * args.patch * 3
    tokens = args.batch * (args.image // args.patch) ** 2
    points = torch.randn(tokens, width, generator=gen).to(device)
    codes = torch.randn(args.vocab, width, generator=gen).to(device)
    ms = {"mimx": median_ms(lambda: nearest_code(points, codes), device, args.repeats),
          "cdist + argmin": median_ms(lambda: torch.cdist(points, codes).argmin(1), device, args.repeats)}
    same = (nearest_code(points, codes)[0] == torch.cdist(points.double(), codes.double()).argmin(1)).float().mean()
    print(f"# token ids of {args.batch} images of {args.image} px in {args.patch}-px patches ({tokens} patches of "
          f"{width} values) against {args.vocab} codes; ms per call, median of {args.repeats}; device {device}, "
          f"threads {torch.get_num_threads()}")
    print("| implementation | ms per call |\n|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} |")
    print(f"\nmimx / cdist + argmin: {ms['cdist + argmin'] / ms['mimx']:.2f}x speed; mimx ids equal the float64 "
          f"reference for {same:.2%} of the patches")


def cmd_head(args: argparse.Namespace) -> None:
    """BEiT-style step (mask tokens, linear head, cross-entropy over ``--vocab`` codes): logits for the hidden
    patches only (what mimx trains with) against logits for every patch, paired in one process, same loss."""
    from mimx.modalities.image import mae_vit

    device = device_of(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mae_vit(args.model, img_size=args.image, patch_size=args.patch, encoder_mode="mask_token",
                    decoder_depth=0, target="tokens", norm_pix=False, loss="cross_entropy", vocab_size=args.vocab,
                    masking={"kind": "block", "ratio": args.mask_ratio}).to(device)
    model.target.load_codes(torch.randn(args.vocab, args.patch * args.patch * 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    x = torch.randn(args.batch, 3, args.image, args.image, device=device)
    mask = model.make_mask(x, generator=torch.Generator().manual_seed(0))

    def step(every_patch: bool) -> tuple[float, float]:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(x, mask=mask, decode_all=every_patch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - start, float(loss.detach())

    with torch.no_grad():
        losses = [float(model(x, mask=mask, decode_all=every).loss) for every in (False, True)]
    for _ in range(args.warmup):
        step(False), step(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.steps):
        for every in (False, True):
            times[every].append(step(every)[0])
    quart = ratio_quartiles(times[False], times[True])
    hidden = int(mask.mask[0].sum())
    print(f"# BEiT-style ViT-{args.model[0].upper()}/{args.patch}, {args.image} px, {args.vocab} codes, block mask "
          f"{args.mask_ratio} ({hidden} of {mask.mask.shape[1]} patches), batch {args.batch}, {args.precision}; "
          f"{args.steps} alternating train steps after {args.warmup} warm-up; device {device}, "
          f"threads {torch.get_num_threads()}")
    print("| logits for | samples/s (median) |\n|---|---|")
    for every, name in ((False, "hidden patches (mimx)"), (True, "every patch")):
        print(f"| {name} | {args.batch / statistics.median(times[every]):.2f} |")
    print(f"\nhidden only / every patch: {quart[1]:.2f}x (quartiles {quart[0]:.2f}-{quart[2]:.2f}x); same loss: "
          f"{losses[0]:.6f} / {losses[1]:.6f}")


def cmd_rel_pos(args: argparse.Namespace) -> None:
    """Train step with BEiT's shared relative position bias (no absolute positions) against the same model with
    fixed sin-cos positions, alternating steps in one process; MAE (drop) or BEiT-style (mask tokens)."""
    from mimx.modalities.image import mae_vit

    device = device_of(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.method == "beit":
        method = dict(encoder_mode="mask_token", decoder_depth=0, target="tokens", norm_pix=False,
                      loss="cross_entropy", vocab_size=args.vocab, masking={"kind": "block", "ratio": 0.4})
    else:
        method = dict(masking={"kind": "random", "ratio": 0.75})
    models, optimizers = {}, {}
    for kind in ("sincos", "rel_pos"):
        torch.manual_seed(0)
        positions = dict(rel_pos_bias="shared", abs_pos=False) if kind == "rel_pos" else {}
        model = mae_vit(args.model, img_size=args.image, patch_size=args.patch, **method, **positions).to(device)
        if args.method == "beit":
            model.target.load_codes(torch.randn(args.vocab, args.patch * args.patch * 3))
        models[kind], optimizers[kind] = model, torch.optim.AdamW(model.parameters(), lr=1e-6)
    x = torch.randn(args.batch, 3, args.image, args.image, device=device)
    mask = models["sincos"].make_mask(x, generator=torch.Generator().manual_seed(0))

    def step(kind: str) -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = models[kind](x, mask=mask).loss
        loss.backward()
        optimizers[kind].step()
        optimizers[kind].zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step("sincos"), step("rel_pos")
    times: dict[str, list[float]] = {"sincos": [], "rel_pos": []}
    for _ in range(args.steps):
        for kind in times:
            times[kind].append(step(kind))
    quart = ratio_quartiles(times["rel_pos"], times["sincos"])  # sin-cos time / relative time per round
    print(f"# {args.method} ViT-{args.model[0].upper()}/{args.patch}, {args.image} px, batch {args.batch}, "
          f"{args.precision}; {args.steps} alternating train steps after {args.warmup} warm-up; device {device}, "
          f"threads {torch.get_num_threads()}")
    print("| positions | samples/s (median) |\n|---|---|")
    for kind, name in (("sincos", "fixed sin-cos (absolute)"), ("rel_pos", "shared relative position bias")):
        print(f"| {name} | {args.batch / statistics.median(times[kind]):.2f} |")
    print(f"\nrelative / sin-cos speed: {quart[1]:.2f}x (quartiles {quart[0]:.2f}-{quart[2]:.2f}x)")


def add_run_args(p: argparse.ArgumentParser, repeats: int | None = None) -> None:
    """``--threads`` and ``--device`` (and ``--repeats`` when given a default) of the single-op benchmarks."""
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")


def add_token_args(p: argparse.ArgumentParser) -> None:
    """Image size, patch and codebook size of the BEiT-style benchmarks (ViT-B/16 on 224 px, 8,192 codes)."""
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=8192)


def cmd_point_step(args: argparse.Namespace) -> None:
    """Point-MAE train step (forward, backward, AdamW) in clouds/s, per precision and ops backend."""
    from mimx.modalities.points import ops

    device = device_of(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = ["torch"] + (["pytorch3d"] if ops.has_pytorch3d() else [])
    points = torch.randn(args.batch, args.points, 3, generator=torch.Generator().manual_seed(0)).to(device)
    print(f"# Point-MAE {args.model} train step: batch {args.batch} x {args.points} points, 64 groups of 32, "
          f"mask 0.6; device {device}, threads {args.threads or torch.get_num_threads()}; ms per step, median of "
          f"{args.repeats} after 1 warm-up")
    print("| precision | ops backend | ms per step | clouds/s | grouping ms (FPS + kNN) | first loss |")
    print("|---|---|---|---|---|---|")
    for precision_name in args.precisions:
        for backend in backends:
            print(point_step_row(args, precision_name, backend, points, device))


def point_step_row(args: argparse.Namespace, precision_name: str, backend: str, points: torch.Tensor,
                   device: torch.device) -> str:
    from mimx.modalities.points.model import PointMAE, point_mae_config
    from mimx.train.precision import Precision
    from mimx.transformer import set_fused_attention

    torch.manual_seed(0)
    model = PointMAE(point_mae_config(preset=args.model, backend=backend, num_points=args.points)).to(device)
    precision = Precision(precision_name, device)
    set_fused_attention(model, precision.prefers_fused_attention())
    precision.attach(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    noise = torch.rand(args.batch, 64, generator=torch.Generator().manual_seed(1)).to(device)
    losses = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = model(points.to(precision.input_dtype), noise=noise).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    ms = median_ms(step, device, args.repeats)
    group_ms = median_ms(lambda: model.groups(points), device, args.repeats)
    return (f"| {precision.label()} | {backend} | {ms:.0f} | {1e3 * args.batch / ms:.1f} | {group_ms:.1f} | "
            f"{float(losses[0]):.5f} |")


def cmd_multimodal_step(args: argparse.Namespace) -> None:
    """MultiMAE (RGB + depth + segmentation) train step against an image MAE with the same tokens and encoder."""
    from mimx.modalities.image.model import ImageMAE, ImageMAEConfig
    from mimx.modalities.multimodal.model import MultiMAE, multimae_config
    from mimx.train.precision import Precision
    from mimx.transformer import set_fused_attention

    device = device_of(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, depth, heads = PRESET_SIZES[args.model]
    s, p, b = args.image, args.patch, args.batch
    grid = (s // p) ** 2
    visible = int(3 * grid * (1 - args.mask_ratio))
    gen = torch.Generator().manual_seed(0)
    maps = {"rgb": torch.randint(0, 256, (b, 3, s, s), generator=gen, dtype=torch.uint8).to(device),
            "depth": (torch.rand(b, 1, s, s, generator=gen) * 5 + 0.5).to(device),
            "semseg": torch.randint(0, 40, (b, s, s), generator=gen).to(device)}
    wide = torch.randn(b, 3, s, 3 * s, generator=gen).to(device)  # one image with the same 3 x grid tokens

    def build(impl: str) -> tuple[torch.nn.Module, object]:
        torch.manual_seed(0)
        if impl == "multimae":
            modalities = {"rgb": {"kind": "pixels"}, "depth": {"kind": "depth"},
                          "semseg": {"kind": "classes", "num_classes": 40}}
            model = MultiMAE(multimae_config(img_size=s, patch_size=p, embed_dim=width, depth=depth, num_heads=heads,
                                             decoder_dim=args.decoder_dim, decoder_depth=2, decoder_heads=8,
                                             num_visible=visible, modalities=modalities))
            noise = torch.rand(b, 3 * grid, generator=torch.Generator().manual_seed(1)).to(device)
            weights = torch.full((b, 3), 1 / 3)
            return model, lambda m, dtype: m(maps, noise=noise, weights=weights).loss
        config = ImageMAEConfig(img_size=[s, 3 * s], patch_size=p, embed_dim=width, depth=depth, num_heads=heads,
                                decoder_dim=args.decoder_dim, decoder_depth=2, decoder_heads=8,
                                masking={"kind": "random", "ratio": args.mask_ratio})
        model = ImageMAE(config)
        noise = torch.rand(b, 3 * grid, generator=torch.Generator().manual_seed(1)).to(device)
        return model, lambda m, dtype: m(wide.to(dtype), noise=noise).loss

    print(f"# MultiMAE vs image MAE train step: ViT-{args.model[0].upper()} encoder, {3 * grid} tokens "
          f"(3 modalities x {grid} / one {s}x{3 * s} image), {visible} visible, decoders {args.decoder_dim} x 2, "
          f"batch {b}; device {device}, threads {args.threads or torch.get_num_threads()}; ms per step, median of "
          f"{args.repeats} after 1 warm-up")
    print("| precision | model | ms per step | samples/s | / image MAE |")
    print("|---|---|---|---|---|")
    for precision_name in args.precisions:
        times = {}
        for impl in ("image-mae", "multimae"):
            model, call = build(impl)
            model.to(device)
            precision = Precision(precision_name, device)
            set_fused_attention(model, precision.prefers_fused_attention())
            precision.attach(model)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            times[impl] = median_ms(lambda m=model, c=call, o=optimizer, pr=precision: _train_step(m, c, o, pr),
                                    device, args.repeats)
        for impl, ms in times.items():
            print(f"| {precision.label()} | {impl} | {ms:.0f} | {1e3 * b / ms:.1f} | "
                  f"{times['image-mae'] / ms:.2f}x |")


def _train_step(model, call, optimizer, precision) -> None:
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        loss = call(model, precision.input_dtype)
    loss.backward()
    optimizer.step()


def cmd_peak(args: argparse.Namespace) -> None:
    device = device_of(args.device)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        print(f"{name} matmul: {matmul_peak(dtype, device) / 1e12:.3f} TFLOP/s on {device}")


def main() -> None:
    from mimx.train.engine import COMPILE_MODES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("step", "paired", "_step", "_paired"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="base", choices=list(PRESET_SIZES))
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--image", type=int, default=224)
        p.add_argument("--patch", type=int, default=16)
        p.add_argument("--mask-ratio", type=float, default=None, help="default 0.75 (image), 0.9 (video)")
        p.add_argument("--modality", choices=["image", "video"], default="image")
        p.add_argument("--frames", type=int, default=16, help="video: frames per clip")
        p.add_argument("--tubelet", type=int, default=2, help="video: frames per tubelet")
        p.add_argument("--steps", type=int, default=5)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--device", default="auto")
        p.add_argument("--threads", type=int, default=0)
        p.add_argument("--compile", action="store_true")
        p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                       help="torch.compile mode for --compile and :compiled entries (reduce-overhead: CUDA graphs)")
        p.add_argument("--cpu-allocator", choices=["heap", "system"], default="heap",
                       help="host allocator for every implementation (mimx.train.allocator; mimx training's default)")
        if name == "step":
            p.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "bf16", "bf16-pure"])
            p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best round counts")
            p.add_argument("--peers", type=lambda s: s.split(","), default=["transformers-sdpa", "transformers-eager"],
                           help="transformers-sdpa, transformers-eager (empty string: none)")
            p.add_argument("--paired", type=int, default=0,
                           help="then this many alternating steps of mimx's best and the peers' best in one process")
        elif name in ("paired", "_paired"):
            p.add_argument("--pair", type=lambda s: s.split(","), required=True,
                           help="impl:precision[:compiled],... e.g. mimx:bf16-pure,transformers-eager:bf16:compiled")
        else:
            p.add_argument("--impl", required=True)
            p.add_argument("--precision", required=True)
    p = sub.add_parser("loader")
    p.add_argument("--shards", default="data/samples/mnist")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[0, 1, 2])
    p = sub.add_parser("video-loader")
    p.add_argument("--shards", default="data/samples/video_clips")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rate", type=int, default=2)
    p.add_argument("--clips", type=int, default=1, help="clips cut from each decoded video")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--backends", type=lambda s: s.split(","), default=["decord", "pyav", "torchcodec"])
    p.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[1, 2])
    p = sub.add_parser("peak")
    p.add_argument("--device", default="auto")
    p = sub.add_parser("head")
    p.add_argument("--model", default="base")
    add_token_args(p)
    p.add_argument("--mask-ratio", type=float, default=0.4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    add_run_args(p)
    p = sub.add_parser("rel-pos")
    p.add_argument("--method", choices=["mae", "beit"], default="beit")
    p.add_argument("--model", default="base")
    add_token_args(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    add_run_args(p)
    p = sub.add_parser("tokens")
    p.add_argument("--batch", type=int, default=64)
    add_token_args(p)
    add_run_args(p, repeats=5)
    p = sub.add_parser("hog")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=224)
    add_run_args(p, repeats=5)
    p = sub.add_parser("point-ops")
    p.add_argument("--clouds", type=int, default=32)
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--centres", type=int, default=64)
    p.add_argument("--k", type=int, default=32)
    add_run_args(p, repeats=5)
    p = sub.add_parser("point-step")
    p.add_argument("--model", default="small", choices=["tiny", "small", "base"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "bf16"])
    add_run_args(p, repeats=3)
    p = sub.add_parser("multimodal-step")
    p.add_argument("--model", default="tiny", choices=list(PRESET_SIZES))
    p.add_argument("--image", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--decoder-dim", type=int, default=128)
    p.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = parser.parse_args()
    if getattr(args, "mask_ratio", 0.0) is None:
        args.mask_ratio = 0.9 if args.modality == "video" else 0.75
    if args.cmd in ("_step", "_paired"):
        print(json.dumps((measure_step if args.cmd == "_step" else measure_paired)(args)))
    else:
        {"step": cmd_step, "paired": cmd_paired, "loader": cmd_loader, "video-loader": cmd_video_loader,
         "peak": cmd_peak, "hog": cmd_hog, "tokens": cmd_tokens, "head": cmd_head, "rel-pos": cmd_rel_pos,
         "point-ops": cmd_point_ops, "point-step": cmd_point_step,
         "multimodal-step": cmd_multimodal_step}[args.cmd](args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
