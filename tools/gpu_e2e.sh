#!/usr/bin/env bash
# The CLI end to end on a GPU, for a session lent a device machine (docs/benchmarks.md, "GPU figures"): short
# pretraining runs of every modality and method family through the real training loop (data workers, pinned
# host batches, host-drawn masks, bf16 autocast, fused AdamW, checkpoints, figures), a stop and resume, the
# frozen and fine-tuning evaluations, then a summary of each run folder. Called first by tools/gpu_check.sh
# (default and QUICK modes) after it installed mimx; the sample shards travel as carried paths:
#   data/samples/{mnist,mnist_test,photos,video_clips,point_clouds,scenes}
# DEVICE=cpu QUICK=1: a dry run here (fewer steps). Each command runs under its own time limit; all output goes
# to $OUT/e2e.txt, and the last line per command is its exit status.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-/tmp/mimx_e2e_runs}
LOG="$OUT/e2e.txt"
mkdir -p "$OUT" && rm -rf "$RUNS" && : > "$LOG"
[ "${QUICK:-0}" = 1 ] && S=6 || S=30  # steps per pretraining run
TRAIN="train.device=$DEVICE train.progress=false train.tensorboard=false train.log_every=5"

e2e() {  # name, limit in seconds, then the command
    local name=$1 limit=$2; shift 2
    echo "== $name: $*" >> "$LOG"
    local t0=$SECONDS
    # `timeout` runs programs, not shell functions: mimx is the installed package's module (-P: not ./mimx)
    [ "$1" = mimx ] && { shift; set -- python3 -P -m mimx "$@"; }
    timeout "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "rc $rc ($((SECONDS - t0)) s)" >> "$LOG"
    echo "$name: rc $rc ($((SECONDS - t0)) s)"
}

# image MAE in bf16: stop at 2/3, then the same command without the stop continues from the checkpoint
IMG="experiment=demo $TRAIN train.precision=bf16 train.steps=$S train.ckpt_every=10 train.figure_every=$S"
e2e image_stop 90 mimx image pretrain $IMG train.stop_at_step=$((S * 2 / 3)) run.dir="$RUNS/image"
e2e image_resume 90 mimx image pretrain $IMG run.dir="$RUNS/image"
e2e image_maskfeat 90 mimx image pretrain experiment=demo method=maskfeat model.hog_cell=2 $TRAIN \
    train.precision=bf16 train.steps=$S train.figure_every=$S run.dir="$RUNS/image_maskfeat"
# SimMIM with BEiT's relative positions (one bias table per block) in bf16-pure
e2e image_simmim 90 mimx image pretrain experiment=demo method=simmim $TRAIN train.precision=bf16-pure \
    model.rel_pos_bias=layer model.abs_pos=false train.steps=$S train.figure_every=$S run.dir="$RUNS/image_simmim"
EVAL="checkpoint=$RUNS/image data.train=data/samples/mnist data.test=data/samples/mnist_test device=$DEVICE"
e2e image_knn 90 mimx image eval knn $EVAL
e2e image_linear 120 mimx image eval linear $EVAL linear.epochs=5
e2e image_finetune 120 mimx image eval finetune $EVAL finetune.epochs=2 finetune.precision=bf16 \
    finetune.stop_at_epoch=1
e2e image_finetune_resume 120 mimx image eval finetune $EVAL finetune.epochs=2 finetune.precision=bf16
e2e image_visualize 60 mimx image visualize "$RUNS/image" data/samples/photos --out "$RUNS/image/visualize.png"

# video: VideoMAE with dual masking, and MaskFeat (HOG of each frame on the GPU)
e2e video_dual 120 mimx video pretrain experiment=demo $TRAIN train.precision=bf16 train.steps=$S \
    train.figure_every=$S model.decoder_mask_ratio=0.5 run.dir="$RUNS/video"
e2e video_maskfeat 120 mimx video pretrain experiment=demo method=maskfeat $TRAIN train.precision=bf16 \
    train.steps=$S train.figure_every=$S run.dir="$RUNS/video_maskfeat"

# point clouds (torch FPS / kNN / Chamfer on the GPU) and the SVM probe
e2e points 120 mimx points pretrain experiment=demo $TRAIN train.precision=bf16 train.steps=$S \
    train.figure_every=$S run.dir="$RUNS/points"
e2e points_svm 120 mimx points eval svm checkpoint=$RUNS/points data.train=data/samples/point_clouds/train \
    data.val=data/samples/point_clouds/val data.test=data/samples/point_clouds/test device=$DEVICE

# MultiMAE and its segmentation probe
e2e multimodal 120 mimx multimodal pretrain experiment=demo $TRAIN train.precision=bf16 train.steps=$S \
    train.figure_every=$S run.dir="$RUNS/multimodal"
e2e multimodal_semseg 120 mimx multimodal eval semseg checkpoint=$RUNS/multimodal \
    data.train=data/samples/scenes/train data.val=data/samples/scenes/val data.test=data/samples/scenes/test \
    head.epochs=5 device=$DEVICE

# what each run left: steps, first and last logged loss, files
python3 - "$RUNS" <<'EOF' 2>&1 | tee -a "$LOG"
import csv, sys
from pathlib import Path

for run in sorted(Path(sys.argv[1]).iterdir()):
    rows = list(csv.DictReader(open(run / "metrics.csv"))) if (run / "metrics.csv").exists() else []
    losses = [(r["step"], r["loss"]) for r in rows if r.get("loss")]
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tensorboard" not in str(p))
    print(f"{run.name}: {len(rows)} metric rows; loss {losses[0] if losses else '-'} -> "
          f"{losses[-1] if losses else '-'}; files {files}")
EOF
