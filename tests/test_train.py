"""End-to-end pretraining on the real sample shards: loss falls, resume is exact, checkpoints stay intact."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from mimx.codebook import save_codebook
from mimx.config import UserError, compose
from mimx.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mimx.modalities.image.pretrain import pretrain
from mimx.train import checkpoint as ckpt
from mimx.train.metrics import read_metrics
from mimx.train.precision import Precision
from mimx.train.sharding import resolve_strategy

MIMX = [sys.executable, "-m", "mimx"]


def run(overrides: list[str]):
    return pretrain(compose("mimx.configs.image", "pretrain", overrides))


def test_cli_pretrain_loss_falls_and_leaves_a_run_folder(samples, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(run_dir, samples, "train.steps=60", "train.figure_every=30", "train.log_every=5")
    proc = subprocess.run([*MIMX, "image", "pretrain", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished at step 60/60" in proc.stderr
    rows = read_metrics(run_dir)
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 12 and all(float(r["samples_per_s"]) > 0 for r in rows)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:2]) / 2, losses
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    for name in ("checkpoints/last.pt", "model.safetensors", "config.yaml", "figures/step-0000000.png",
                 "figures/step-0000030.png", "figures/step-0000060.png"):
        assert (run_dir / name).exists(), name
    # the export command turns the run into a plain timm ViT
    out = tmp_path / "export"
    proc = subprocess.run([*MIMX, "image", "export", str(run_dir), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert set(load_file(out / "encoder.safetensors")) >= {"cls_token", "pos_embed", "patch_embed.proj.weight"}


@pytest.mark.parametrize("mode", [["train.precision=auto"], ["train.precision=bf16-pure"],
                                  ["masking=block", "masking.min_block=2", "masking.ratio=0.5"]],
                         ids=["auto", "bf16-pure", "block-masks"])
def test_resume_gives_identical_weights(samples, tmp_path, mode):
    # block masks come from the host generator: its state is checkpointed like the device ones
    full, split = tmp_path / "full", tmp_path / "split"
    run(tiny_overrides(full, samples, "train.steps=12", *mode))
    first = run(tiny_overrides(split, samples, "train.steps=12", "train.stop_at_step=5", *mode))
    assert first.step == 5 and first.stopped_early
    assert not (split / "model.safetensors").exists()
    second = run(tiny_overrides(split, samples, "train.steps=12", *mode))
    assert second.step == 12
    a, b = load_file(full / "model.safetensors"), load_file(split / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert a[k].dtype == torch.float32  # bf16-pure saves its fp32 master weights
    ca, cb = ckpt.load(full / "checkpoints/last.pt"), ckpt.load(split / "checkpoints/last.pt")
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


def test_resuming_with_another_lr_schedule_says_what_changed(samples, tmp_path, capsys):
    run(tiny_overrides(tmp_path, samples, "train.steps=6", "train.stop_at_step=2"))
    run(tiny_overrides(tmp_path, samples, "train.steps=6", "train.stop_at_step=3"))  # the same plan: no note
    assert "lr schedule differs" not in capsys.readouterr().err
    run(tiny_overrides(tmp_path, samples, "train.steps=8", "train.warmup_steps=3", "train.stop_at_step=4"))
    err = capsys.readouterr().err
    assert ("the lr schedule differs from the one this run started with (steps 6 -> 8, warm-up steps 2 -> 3): "
            "from step 3 on the lr follows the new one") in err


def test_checkpoint_of_another_model_is_refused_clearly(samples, tmp_path):
    run(tiny_overrides(tmp_path, samples, "train.steps=2"))
    with pytest.raises(UserError, match=r"last.pt is from another model \(embed_dim: checkpoint 48 vs config 96"):
        run(tiny_overrides(tmp_path, samples, "train.steps=4", "model.embed_dim=96"))
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        run(tiny_overrides(tmp_path, samples, "train.steps=4"))


def test_crash_while_saving_keeps_the_last_good_checkpoint(samples, tmp_path, monkeypatch):
    run(tiny_overrides(tmp_path, samples, "train.steps=4"))
    path = tmp_path / "checkpoints" / "last.pt"
    good = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_atomic({"x": 1}, path)
    assert path.read_bytes() == good
    assert not list(path.parent.glob(".*tmp*"))
    monkeypatch.undo()
    assert ckpt.load(path)["step"] == 4


def test_loaded_checkpoint_is_mapped_copy_on_write_and_legacy_files_still_load(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_atomic({"model": {"w": torch.zeros(4096)}}, path)
    before = path.read_bytes()
    state = ckpt.load(path)
    state["model"]["w"].add_(1.0)  # as an optimizer steps the moments it resumed with, in place
    assert path.read_bytes() == before
    assert ckpt.load(path)["model"]["w"].abs().sum() == 0
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {"w": torch.ones(3)}}, legacy, _use_new_zipfile_serialization=False)
    assert ckpt.load(legacy)["model"]["w"].tolist() == [1.0, 1.0, 1.0]


def test_sigterm_stops_cleanly_and_rerun_continues(samples, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(run_dir, samples, "train.steps=100000", "train.log_every=1")
    proc = subprocess.Popen([*MIMX, "image", "pretrain", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "metrics.csv").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped (run again to continue)" in err
    step = ckpt.load(run_dir / "checkpoints" / "last.pt")["step"]
    assert step >= 1
    result = run(tiny_overrides(run_dir, samples, "train.steps=100000", f"train.stop_at_step={step + 2}"))
    assert result.step == step + 2


def _equivalence_run(samples: Path, out: Path, per_rank: int, *options: str, procs: int = 1) -> dict:
    script = Path(__file__).with_name("ddp_equivalence.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable]
    if procs > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    proc = subprocess.run([*launch, str(script), str(samples), str(out), str(per_rank), *options],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


def _assert_same_training(a: dict, b: dict) -> None:
    assert len(a["losses"]) == len(b["losses"]) == 6
    torch.testing.assert_close(b["losses"], a["losses"], rtol=1e-4, atol=1e-5)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def one(samples, tmp_path_factory) -> dict:
    """Six steps of one process with the global batch of 8: what every distributed layout must reproduce."""
    return _equivalence_run(samples, tmp_path_factory.mktemp("one") / "one.pt", per_rank=8)


def test_two_process_ddp_and_accumulation_equal_one_big_batch(samples, tmp_path, one):
    _assert_same_training(one, _equivalence_run(samples, tmp_path / "two.pt", per_rank=4, procs=2))
    _assert_same_training(one, _equivalence_run(samples, tmp_path / "accum.pt", 4, "--accum=2"))
    # and the check can fail: a different global batch trains differently
    other = _equivalence_run(samples, tmp_path / "other.pt", per_rank=4)
    assert not torch.allclose(other["model"]["encoder.norm.weight"], one["model"]["encoder.norm.weight"])


def test_init_starts_a_new_run_from_another_runs_weights(samples, tmp_path, capsys):
    first = tmp_path / "first"
    run(tiny_overrides(first, samples, "train.steps=4"))
    # lr 0: the one step changes nothing, so the new run ends with exactly the weights it started from
    second = tmp_path / "second"
    result = run(tiny_overrides(second, samples, "train.steps=1", "train.lr=0", f"train.init={first}"))
    assert result.step == 1 and "starting from the weights of" in capsys.readouterr().err
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a run continuing from its own checkpoint ignores train.init
    run(tiny_overrides(second, samples, "train.steps=2", "train.lr=0", f"train.init={first}"))
    assert "train.init ignored" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"train.init=.* is from another model \(depth: checkpoint 2 vs config 3\)\. "
                                        "Set the model to the init's settings"):
        run(tiny_overrides(tmp_path / "third", samples, "train.steps=1", "model.depth=3", f"train.init={first}"))
    with pytest.raises(UserError, match="does not exist"):
        run(tiny_overrides(tmp_path / "fourth", samples, "train.steps=1", f"train.init={tmp_path / 'nothing'}"))


def test_init_keeps_a_configured_codebook_and_else_takes_the_inits(samples, tmp_path, capsys):
    info = {"patch": [4, 4], "channels": 3, "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}
    codes = [torch.randn(32, 48, generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)]
    files = [save_codebook(tmp_path / f"codes{i}.safetensors", c, info) for i, c in enumerate(codes)]

    def beit(run_dir: Path, *extra: str):
        args = [a for a in tiny_overrides(run_dir, samples, "train.steps=2", "method=beit", *extra)
                if not a.startswith("model.decoder_")]
        run(args)
        return ckpt.load(run_dir / "checkpoints" / "last.pt")["model"]["target.codebook"]

    assert torch.equal(beit(tmp_path / "first", f"model.codebook={files[0]}"), codes[0])
    capsys.readouterr()
    kept = beit(tmp_path / "second", f"model.codebook={files[1]}", f"train.init={tmp_path / 'first'}")
    assert torch.equal(kept, codes[1]) and "target.codebook kept as configured" in capsys.readouterr().err
    taken = beit(tmp_path / "third", f"train.init={tmp_path / 'first'}")  # codes and their count
    assert torch.equal(taken, codes[0]) and "target.codebook taken from" in capsys.readouterr().err


def test_strategy_choices_and_what_fsdp_refuses(samples, tmp_path):
    assert [resolve_strategy(s, 2) for s in ("auto", "ddp", "fsdp")] == ["ddp", "ddp", "fsdp"]
    assert resolve_strategy("fsdp", 1) == "single"
    with pytest.raises(UserError, match="train.strategy='zero3'; choose auto"):
        resolve_strategy("zero3", 2)
    with pytest.raises(UserError, match="use train.precision=bf16"):
        Precision("fp16", torch.device("cuda"), sharded=True)
    sharded = Precision("bf16-pure", torch.device("cpu"), sharded=True)
    assert sharded.param_dtype == torch.bfloat16 and not sharded.keeps_masters
    assert Precision("bf16-pure", torch.device("cpu")).keeps_masters
    with pytest.raises(UserError, match="train.strategy"):
        run(tiny_overrides(tmp_path, samples, "train.steps=1", "train.strategy=zero3"))


def test_fsdp_trains_as_one_process_and_its_checkpoints_resume_under_any_strategy(samples, tmp_path, one):
    fsdp = _equivalence_run(samples, tmp_path / "fsdp.pt", 4, "--strategy=fsdp", procs=2)
    _assert_same_training(one, fsdp)
    # the checkpoint FSDP wrote has the unsharded layout: whole tensors, AdamW state by parameter index
    assert fsdp["optimizer"]["state"].keys() == one["optimizer"]["state"].keys()
    for i, state in one["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fsdp["optimizer"]["state"][i][name], state[name], rtol=1e-4, atol=1e-6)
    assert [g["params"] for g in fsdp["optimizer"]["param_groups"]] == [
        g["params"] for g in one["optimizer"]["param_groups"]]
    # stopped under FSDP, continued under DDP, stopped again, finished under FSDP: the run never stopped
    run_dir = tmp_path / "fsdp-ddp-fsdp"
    for strategy, stop in (("fsdp", 2), ("ddp", 4), ("fsdp", None)):
        part = _equivalence_run(samples, tmp_path / "part.pt", 4, f"--strategy={strategy}", f"--run-dir={run_dir}",
                                *([f"--stop-at={stop}"] if stop else []), procs=2)
        assert len(part["losses"]) == (stop or 6)
    _assert_same_training(one, part)


@pytest.mark.parametrize("method", ["mae", "beit", "beit-fsdp"])
def test_torchrun_cli_smoke(samples, tmp_path, method):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "mimx"]
    fsdp = method.endswith("-fsdp")
    method = method.removesuffix("-fsdp")
    args = tiny_overrides(tmp_path, samples, "train.steps=4", "data.num_workers=1", f"method={method}")
    if fsdp:  # sharded bf16 compute over fp32 master shards; figures drawn from the gathered weights
        args += ["train.strategy=fsdp", "train.precision=bf16-pure", "train.figure_every=2"]
    if method == "beit":  # the codebook is the same on both ranks and is not re-sent every step
        codes = torch.randn(32, 48, generator=torch.Generator().manual_seed(0))
        path = save_codebook(tmp_path / "codes.safetensors", codes, {
            "patch": [4, 4], "channels": 3, "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}})
        args = [a for a in args if not a.startswith("model.decoder_")] + [f"model.codebook={path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*torchrun, "image", "pretrain", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) x 16" in proc.stderr
    state = ckpt.load(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 4 and len(state["ranks"]) == 2
    if method == "beit":
        assert torch.equal(state["model"]["target.codebook"], codes)
    if fsdp:
        assert "FSDP" in proc.stderr and "precision bf16-pure" in proc.stderr
        assert state["model"]["encoder.blocks.0.attn.qkv.weight"].dtype == torch.float32  # the masters
        assert state["model"]["target.codebook"].dtype == torch.float32
        assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
            f"step-{s:07d}.png" for s in (0, 2, 4)]
        assert (tmp_path / "model.safetensors").exists()


def test_bf16_pure_trains_as_well_as_autocast(samples, tmp_path):
    final = {}
    for precision in ("bf16", "bf16-pure", "fp32"):
        run(tiny_overrides(tmp_path / precision, samples, "train.steps=40", f"train.precision={precision}",
                           "train.log_every=10"))
        final[precision] = float(read_metrics(tmp_path / precision)[-1]["loss"])
    assert abs(final["bf16-pure"] - final["fp32"]) < 0.05 * final["fp32"], final
    assert abs(final["bf16"] - final["fp32"]) < 0.05 * final["fp32"], final


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_training_logs_the_eager_losses(samples, tmp_path):
    """``train.compile=true`` through the engine (bf16-pure, its attention switch, resumable loader): the
    same logged losses as eager, to bf16 rounding; a wrong mode is refused before anything runs."""
    common = ("train.steps=6", "train.precision=bf16-pure", "train.fused_attention=auto", "train.ckpt_every=0")
    run(tiny_overrides(tmp_path / "eager", samples, *common))
    run(tiny_overrides(tmp_path / "compiled", samples, *common, "train.compile=true"))
    eager = [float(r["loss"]) for r in read_metrics(tmp_path / "eager")]
    compiled = [float(r["loss"]) for r in read_metrics(tmp_path / "compiled")]
    assert len(eager) == 3 and compiled == pytest.approx(eager, rel=0.01)
    with pytest.raises(UserError, match=r"train.compile='fastest'; choose false, true or one of default"):
        run(tiny_overrides(tmp_path / "bad", samples, "train.compile=fastest"))
    assert not (tmp_path / "bad" / "checkpoints").exists()


ALLOCATOR_PROBE = """
import resource, torch
from mimx.train.allocator import tune_cpu_allocator

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        x = torch.ones(16 * 2**20)  # 64 MiB, above glibc's largest mmap threshold, freed each time
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

system = faults()
assert tune_cpu_allocator("auto", torch.device("cuda")) == "system"  # GPU training leaves the host alone
mode = tune_cpu_allocator("auto", torch.device("cpu"))
faults()  # the first cycle grows the heap once
print(mode, system, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator setting")
def test_heap_allocator_stops_page_faults_on_large_tensors():
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], capture_output=True, text=True, check=True)
    mode, system, heap = out.stdout.split()
    assert mode == "heap"
    assert int(system) > 3 * 16 * 2**20 * 4 // 4096 // 2  # the system allocator faults in the pages every time
    assert int(heap) < 1000  # the heap reuses them


def test_cpu_allocator_rejects_unknown_mode():
    from mimx.train.allocator import tune_cpu_allocator

    with pytest.raises(UserError, match="cpu_allocator"):
        tune_cpu_allocator("jemalloc", torch.device("cpu"))


def test_bf16_pure_master_gradients_accumulate_then_restart_each_step():
    """Micro-steps add into the fp32 masters' gradients; the next step's first backward replaces them, and a
    weight that got no gradient in a step has a zero gradient, not last step's."""
    from torch import nn

    from mimx.train.precision import Precision

    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(4, 3), "b": nn.Linear(4, 3)})
    precision = Precision("bf16-pure", torch.device("cpu"))
    precision.attach(model)
    optimizer = torch.optim.SGD(precision.optimizer_groups([{"params": [], "names": list(precision.masters)}]), lr=0)
    x = torch.randn(6, 4, dtype=torch.bfloat16)

    def grads(*halves: slice, use_b: bool = True) -> dict[str, torch.Tensor]:
        for part in halves:
            out = model["a"](x[part]).float().square().sum()
            if use_b:
                out = out + model["b"](x[part]).float().sum()
            precision.backward(out)
        found = {n: m.grad.clone() for n, m in precision.masters.items()}
        precision.step(optimizer, model, None)
        return found

    whole = grads(slice(0, 6))
    split = grads(slice(0, 3), slice(3, 6))
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=2e-2, atol=2e-2)
    again = grads(slice(0, 6), use_b=False)  # replaced, not added to the previous step's
    torch.testing.assert_close(again["a.weight"], whole["a.weight"], rtol=2e-2, atol=2e-2)
    assert again["b.weight"].abs().sum() == 0 and again["b.bias"].abs().sum() == 0


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_runs(samples, tmp_path):
    from mimx.train.launch import lock_run

    held = lock_run(tmp_path)  # what a running training holds
    try:
        with pytest.raises(UserError, match=r"is in use by a running training \(pid \d+ on .*another run.dir"):
            run(tiny_overrides(tmp_path, samples, "train.steps=1"))
    finally:
        held.close()
    assert run(tiny_overrides(tmp_path, samples, "train.steps=1")).step == 1  # released: the folder is free again


def test_a_forked_worker_does_not_keep_the_run_folder_locked(tmp_path):
    from mimx.train.launch import lock_run

    held = lock_run(tmp_path)
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # a data-loader worker that outlives its training
        os.write(started, b"1")  # the fork handlers have run
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"1"
        held.close()  # the training ends (or is killed) while the worker still runs
        again = lock_run(tmp_path)
        assert again.owner() == f"pid {os.getpid()} on {socket.gethostname()}"
        again.close()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(started)

