"""Quality benchmark on real data: MAE (or SimMIM, MaskFeat, BEiT-style) pretraining on Fashion-MNIST, then kNN,
linear and attentive probes and few-label fine-tuning.

    python tools/quality_benchmark.py [--data data/fashion_mnist] [--out runs/fmnist_bench] [--epochs 12]
    python tools/quality_benchmark.py --quick      # MNIST 5k sample shards, a few minutes
    python tools/quality_benchmark.py --method simmim --epochs 5 --protocols knn,linear --baselines none
    python tools/quality_benchmark.py --method beit --set model.rel_pos_bias=shared --set model.abs_pos=false

1. Pretrains a small ViT (``--method mae|simmim|maskfeat|beit``; beit fits its codebook first) on the 60,000
   training images without labels.
2. kNN and linear probe on the test set for: the MAE encoder, the same encoder
   at random init, and raw pixels; the attentive probe (patch tokens) for the
   first two.
3. Fine-tunes with 1 % and 10 % of the training labels: MAE-initialised against
   trained from scratch with the same budget.
Every choice (probe lr and epoch, fine-tune epoch) is made on a validation split
of the training set; the test set is scored once per experiment. Needs Debian's
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``) unless ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MIMX = [sys.executable, "-m", "mimx"]
# per method, the model and masking settings for 28 px images in 4-px patches (a 7 x 7 grid)
METHOD_ARGS = {
    "mae": ["model.decoder_dim=128", "model.decoder_depth=2", "model.decoder_heads=4"],
    "simmim": ["masking.cell=1"],  # SimMIM's 32-px cells would be 8 patches: one mask cell per patch here
    "maskfeat": ["model.hog_cell=2", "masking.min_block=4"],  # 2 x 2 HOG cells per patch, as 8-px cells in 16
    "beit": ["masking.min_block=4"],  # plus model.codebook: a codebook fitted first on the same views
}
CODEBOOK_SIZE = 512  # codes for 4 x 4 grey patches (BEiT's 8,192 are for 16 x 16 x 3)


def run(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/fashion_mnist")
    parser.add_argument("--out", default="runs/fmnist_bench")
    parser.add_argument("--epochs", type=float, default=15)
    parser.add_argument("--quick", action="store_true", help="MNIST 5k sample shards and short schedules")
    parser.add_argument("--precision", default="bf16-pure")
    parser.add_argument("--method", choices=sorted(METHOD_ARGS), default="mae")
    parser.add_argument("--protocols", default="knn,linear,attentive,finetune",
                        help="comma-separated subset of knn, linear, attentive, finetune")
    parser.add_argument("--baselines", choices=["all", "none"], default="all",
                        help="none: evaluate only the pretrained encoder (random init and pixels skipped)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra model or masking override for pretraining (repeatable), e.g. "
                             "--set model.rel_pos_bias=shared --set model.abs_pos=false")
    args = parser.parse_args()
    out = Path(args.out)
    if args.quick:
        from mimx.datasets.samples import ensure_samples

        root = ensure_samples("data/samples")
        train, test = f"{root}/mnist", f"{root}/mnist_test"
        epochs, ft = args.epochs if args.epochs != 15 else 30, {"0.1": 10, "1.0": 10}
    else:
        if not (Path(args.data) / "train").exists():
            from mimx.datasets.fashion_mnist import convert

            convert(args.data)
        train, test = f"{args.data}/train", f"{args.data}/test"
        epochs, ft = args.epochs, {"0.01": 60, "0.1": 15}
    timings: dict[str, float] = {}

    pretrain_run = out / "pretrain"
    model = ["model=vit_tiny", "model.img_size=28", "model.patch_size=4", "model.depth=6",
             f"method={args.method}", *METHOD_ARGS[args.method], *args.set]
    data = ["data=shards", f"data.shards={train}", "data.scale=[0.5,1.0]", "data.num_workers=2"]
    if args.method == "beit":  # BEiT-style targets: a codebook of the training views' patches, fitted first
        codebook = out / "codebook.safetensors"
        timings["codebook"] = run([*MIMX, "image", "codebook", *model, *data, f"codebook.out={codebook}",
                                   f"codebook.vocab_size={CODEBOOK_SIZE}", "codebook.images=60000",
                                   "codebook.patches_per_image=0"])
        model.append(f"model.codebook={codebook}")
    timings["pretrain"] = run([*MIMX, "image", "pretrain", *model, *data, f"train.epochs={epochs}",
                               "train.warmup_epochs=1", "train.batch_size=256", "train.base_lr=1e-3",
                               f"train.precision={args.precision}", "train.figure_every=1000", "train.log_every=50",
                               f"run.dir={pretrain_run}"])
    common = [f"checkpoint={pretrain_run}", f"data.train={train}", f"data.test={test}", "data.num_workers=2"]
    results: dict[str, dict] = {}
    protocols = args.protocols.split(",")
    for protocol in ("knn", "linear", "attentive"):
        if protocol not in protocols:
            continue
        baselines = ("random",) if protocol == "attentive" else ("random", "pixels")
        for encoder in ("pretrained", *baselines) if args.baselines == "all" else ("pretrained",):
            name = f"{protocol}-{encoder}"
            timings[name] = run([*MIMX, "image", "eval", protocol, *common, f"encoder={encoder}", "pool=mean",
                                 f"run.dir={out / 'eval' / name}"])
            results[name] = json.loads((out / "eval" / name / f"eval-{protocol}-{encoder}.json").read_text())
    for fraction, ft_epochs in ft.items() if "finetune" in protocols else ():
        for encoder in ("pretrained", "random") if args.baselines == "all" else ("pretrained",):
            name = f"finetune{float(fraction) * 100:g}pct-{encoder}"
            timings[name] = run([*MIMX, "image", "eval", "finetune", *common, f"encoder={encoder}",
                                 f"data.label_fraction={fraction}", "data.scale=[0.6,1.0]",
                                 f"finetune.epochs={ft_epochs}", f"finetune.warmup_epochs={max(1, ft_epochs // 10)}",
                                 "finetune.base_lr=4e-3", "finetune.batch_size=64",
                                 f"finetune.precision={args.precision}", f"run.dir={out / 'eval' / name}"])
            results[name] = json.loads((out / "eval" / name / f"eval-finetune-{encoder}.json").read_text())

    print("\n| experiment | encoder | train / val / test samples | choice | val top-1 | test top-1 | wall time |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        chosen = ", ".join(f"{k} {v}" for k, v in r.get("chosen", {}).items()) or "-"
        experiment = name.rsplit("-", 1)[0]
        print(f"| {experiment} | {r['encoder']} | {r['train_samples']} / {r['val_samples']} / {r['test_samples']} | "
              f"{chosen} | {r['val_top1']:.2f} | {r['test_top1']:.2f} | {timings[name]:.0f} s |")
    print(f"\npretraining: {timings['pretrain']:.0f} s; total {sum(timings.values()) / 60:.1f} min")
    (out / "summary.json").write_text(json.dumps({"results": results, "timings": timings}, indent=1))


if __name__ == "__main__":
    main()
