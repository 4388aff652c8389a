"""Evaluation protocols: kNN on a constructed case, the linear probe on a separable set, the CLI end to end."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_overrides

from mimx.config import compose
from mimx.data.split import SplitFilter, in_fraction
from mimx.evaluation import accuracy, knn_predict, probe_predict, train_attentive_probe, train_linear_probe
from mimx.modalities.image.pretrain import pretrain
from mimx.train.finetune import layer_decay_groups, vit_layer_id


def test_knn_weighted_votes_on_a_constructed_case():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    queries = torch.tensor([[1.0, 0.0], [0.1, 1.0], [-1.0, 0.2], [1.0, 0.0]])
    truth = torch.tensor([0, 1, 1, 1])
    pred = knn_predict(train, labels, queries, num_classes=3, k=3, temperature=0.07)
    # q1: the nearest sample (class 0) outweighs two farther class-1 samples; q3 and q4 are labelled wrong on purpose
    assert pred.tolist() == [0, 1, 2, 0]
    assert accuracy(pred, truth) == 50.0
    # with a huge temperature the votes are (almost) equal: the majority of the 3 neighbours wins for q1
    assert knn_predict(train, labels, queries[:1], 3, k=3, temperature=100.0).tolist() == [1]
    # cosine similarity: scale does not matter
    assert torch.equal(knn_predict(train * 5, labels, queries * 0.1, 3, k=3), pred)


def test_linear_probe_learns_a_separable_set():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 3
    def blobs(n):
        y = torch.arange(n) % 3
        return centres[y] + torch.randn(n, 16, generator=gen) * 0.5 + 10.0, y  # offset: BatchNorm must handle it
    (tx, ty), (vx, vy), (sx, sy) = blobs(300), blobs(60), blobs(60)
    result = train_linear_probe(tx, ty, vx, vy, 3, lrs=(0.01, 0.1), epochs=10, batch_size=32)
    assert result.val_top1 == 100.0 and result.lr in (0.01, 0.1) and 1 <= result.epoch <= 10
    result.model.eval()
    assert accuracy(result.model(sx).argmax(1), sy) == 100.0
    assert len(result.history) == 20


def marked_token_set(n: int, gen: torch.Generator, length: int = 8, classes: int = 4, dim: int = 16):
    """Every token codes a random class; the label is the class of the one token with a marker feature."""
    codes = torch.randint(0, classes, (n, length), generator=gen)
    x = torch.zeros(n, length, dim).scatter_(2, codes.unsqueeze(-1), 1.0)
    marked = torch.randint(0, length, (n,), generator=gen)
    x[torch.arange(n), marked, classes] = 1.0
    return x + 0.1 * torch.randn(n, length, dim, generator=gen), codes[torch.arange(n), marked]


def test_attentive_probe_finds_the_token_that_mean_pooling_dilutes():
    gen = torch.Generator().manual_seed(0)
    (tx, ty), (vx, vy), (sx, sy) = (marked_token_set(n, gen) for n in (800, 200, 400))
    attentive = train_attentive_probe(tx, ty, vx, vy, 4, lrs=(3e-3,), epochs=20)
    assert accuracy(probe_predict(attentive.model, sx), sy) >= 97.0
    mean = train_linear_probe(tx.mean(1), ty, vx.mean(1), vy, 4, lrs=(0.1,), epochs=20)
    assert accuracy(probe_predict(mean.model, sx.mean(1)), sy) < 70.0  # the same tokens, mean-pooled
    views = torch.stack([sx, sx.flip(1)], dim=1)  # [N, V, L, D]: token order does not matter, logits averaged
    assert torch.equal(probe_predict(attentive.model, views), probe_predict(attentive.model, sx))


def test_attentive_probe_equals_multihead_cross_attention():
    from mimx.evaluation import AttentiveProbe

    torch.manual_seed(0)
    probe = AttentiveProbe(32, 5, heads=4)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():  # the same projections; a key bias shifts every score alike, so any value works
        mha.in_proj_weight.copy_(torch.cat([probe.q.weight, probe.k.weight, probe.v.weight]))
        mha.in_proj_bias.copy_(torch.cat([probe.q.bias, torch.randn(32), probe.v.bias]))
        mha.out_proj.load_state_dict(probe.proj.state_dict())
    tokens = probe.norm(torch.randn(6, 20, 32))
    query = probe.query.expand(6, 1, 32)
    expected = query[:, 0] + mha(query, tokens, tokens, need_weights=False)[0][:, 0]
    torch.testing.assert_close(probe.pool(tokens), expected, atol=1e-6, rtol=1e-5)


def test_feature_cache_budget_stops_with_one_clear_message():
    from mimx.config import UserError
    from mimx.protocols import EvalSplitConfig, FeatureBudget, extract_features

    batches = [{"label": torch.zeros(4, dtype=torch.long), "x": torch.randn(4, 49, 8)} for _ in range(3)]
    exact = FeatureBudget(EvalSplitConfig(feature_cache_gb=3 * 4 * 49 * 8 * 2 / 2**30))
    feats, labels = extract_features(batches, lambda b: b["x"], torch.bfloat16, exact, part="train")
    assert feats.dtype == torch.bfloat16 and feats.shape == (12, 49, 8) and len(labels) == 12
    assert exact.left == 0
    short = FeatureBudget(EvalSplitConfig(feature_cache_gb=(2 * 4 * 49 * 8 * 2 - 1) / 2**30))
    with pytest.raises(UserError, match=r"train part passed data.feature_cache_gb after 8 samples of \(49, 8\)"):
        extract_features(batches, lambda b: b["x"], torch.bfloat16, short, part="train")
    assert FeatureBudget(EvalSplitConfig()).left > 2**20  # default: half the physical memory


def test_splits_are_stable_and_disjoint():
    keys = [f"k{i:05d}" for i in range(5000)]
    train, val = SplitFilter("train", 0.1), SplitFilter("val", 0.1)
    in_val = [k for k in keys if val(k)]
    assert abs(len(in_val) - 500) < 60
    assert not any(train(k) for k in in_val) and all(train(k) for k in keys if not val(k))
    few = SplitFilter("train", 0.1, label_fraction=0.1)
    assert abs(sum(map(few, keys)) - 450) < 60
    assert in_fraction("abc", 0.5, "x") == in_fraction("abc", 0.5, "x")


def test_layer_decay_scales():
    from mimx.modalities.image import mae_vit
    from mimx.modalities.image.interop import to_timm

    vit = to_timm(mae_vit("tiny", img_size=16, patch_size=4, depth=3, decoder_depth=1, decoder_dim=32,
                          decoder_heads=2), num_classes=5, global_pool="avg")
    assert vit_layer_id("patch_embed.proj.weight", 3) == 0 and vit_layer_id("blocks.2.mlp.fc1.weight", 3) == 3
    groups = layer_decay_groups(vit, 0.05, 0.5, depth=3)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.2.attn.qkv.weight"] == 0.5
    assert math.isclose(scale["cls_token"], 0.5**4)
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert decay["blocks.0.norm1.weight"] == 0.0 and decay["pos_embed"] == 0.0 and decay["head.weight"] == 0.05


@pytest.fixture(scope="module")
def tiny_run(samples, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("evalrun")
    pretrain(compose("mimx.configs.image", "pretrain", tiny_overrides(run_dir, samples, "train.steps=30")))
    return run_dir


@pytest.mark.parametrize("protocol,extra", [
    ("knn", []),
    ("knn", ["data.cache_mb=0"]),  # streamed splits instead of in-memory ones
    ("linear", ["linear.epochs=3", "linear.lrs=[0.1]"]),
    ("attentive", ["attentive.epochs=2", "attentive.lrs=[3e-3]"]),
    ("finetune", ["finetune.epochs=3", "finetune.warmup_epochs=1", "finetune.base_lr=1e-2", "finetune.batch_size=64",
                  "data.label_fraction=0.5", "data.scale=[0.8,1.0]", "data.hflip=0", "data.num_workers=1"]),
])
def test_eval_commands_end_to_end_on_mnist(samples, tiny_run, protocol, extra):
    cmd = [sys.executable, "-m", "mimx", "image", "eval", protocol, f"checkpoint={tiny_run}",
           f"data.train={samples}/mnist", f"data.test={samples}/mnist_test", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tiny_run / f"eval-{protocol}-pretrained.json").read_text())
    assert result["test_samples"] == 1000 and result["num_classes"] == 10
    assert 330 < result["val_samples"] < 470  # ~10 % of the 4,000 training digits
    if protocol == "finetune":
        assert 1600 < result["train_samples"] < 2000  # half of the other ~3,600 labels
    else:
        assert result["train_samples"] + result["val_samples"] == 4000
    assert result["test_top1"] > 30.0, result  # chance is 10 %
    metrics = (tiny_run / "metrics.csv").read_text()
    assert f"eval-{protocol}-pretrained/test_top1" in metrics.splitlines()[0]


def test_key_shares_split_every_key_once():
    from mimx.data.split import KeyShare

    keys = [f"sample-{i:05d}" for i in range(3000)]
    shares = [{k for k in keys if KeyShare(rank, 3)(k)} for rank in range(3)]
    assert sum(len(s) for s in shares) == len(keys) and set().union(*shares) == set(keys)
    assert all(900 < len(s) < 1100 for s in shares)


@pytest.mark.parametrize("cache_mb", [1024, 0])  # training part in memory (split by sample) or streamed (by shard)
def test_finetune_on_two_processes(samples, tiny_run, tmp_path, cache_mb):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "mimx"]
    args = ["image", "eval", "finetune", f"checkpoint={tiny_run}", f"data.train={samples}/mnist",
            f"data.test={samples}/mnist_test", f"run.dir={tmp_path}", "finetune.epochs=3", "finetune.warmup_epochs=1",
            "finetune.base_lr=1e-2", "finetune.batch_size=32", "data.label_fraction=0.5", "data.scale=[0.8,1.0]",
            "data.hflip=0", "data.num_workers=1", f"data.cache_mb={cache_mb}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*torchrun, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "eval-finetune-pretrained.json").read_text())
    # every test digit scored exactly once over the two processes' shares
    assert result["test_samples"] == result["test_scored"] == 1000
    assert len(result["history"]) == 3 and result["test_top1"] > 30.0, result  # chance is 10 %
    assert proc.stderr.count("[mimx] finetune epoch 3/3") == 1  # one process reports
    if not cache_mb:  # stopped after epoch 1 and continued: the same fine-tuning as never stopped
        half = subprocess.run([*torchrun, *args[:6], f"run.dir={tmp_path / 'resumed'}", *args[7:],
                               "finetune.stop_at_epoch=1"], capture_output=True, text=True, env=env, timeout=600)
        assert half.returncode == 0 and "stopped after epoch 1/3" in half.stderr, half.stderr[-3000:]
        assert not (tmp_path / "resumed" / "eval-finetune-pretrained.json").exists()
        rest = subprocess.run([*torchrun, *args[:6], f"run.dir={tmp_path / 'resumed'}", *args[7:]],
                              capture_output=True, text=True, env=env, timeout=600)
        assert rest.returncode == 0 and "continuing after epoch 1/3" in rest.stderr, rest.stderr[-3000:]
        resumed = json.loads((tmp_path / "resumed" / "eval-finetune-pretrained.json").read_text())
        assert [h["val_top1"] for h in resumed["history"]] == [h["val_top1"] for h in result["history"]]
        assert resumed["test_top1"] == result["test_top1"]
    if cache_mb:  # frozen features on two processes (each its share of the keys, the main one scores) = one
        from mimx.modalities.image.evaluate import evaluate

        knn = subprocess.run([*torchrun, *args[:2], "knn", *args[3:6], f"run.dir={tmp_path / 'knn'}"],
                             capture_output=True, text=True, env=env, timeout=600)
        assert knn.returncode == 0, knn.stderr[-3000:]
        assert knn.stderr.count("[mimx] knn (pretrained encoder)") == 1  # one process reports
        two = json.loads((tmp_path / "knn" / "eval-knn-pretrained.json").read_text())
        one = evaluate(compose("mimx.configs.image", "eval", [
            "protocol=knn", *args[3:6], f"run.dir={tmp_path / 'knn1'}", "data.num_workers=1"]))
        fields = ("train_samples", "val_samples", "test_samples", "val_top1", "test_top1")
        assert {f: two[f] for f in fields} == {f: one[f] for f in fields} and one["test_samples"] == 1000


def test_finetune_stops_and_continues_as_one_run(samples, tiny_run, tmp_path):
    from mimx.modalities.image.evaluate import evaluate

    def run(run_dir, *extra):
        return evaluate(compose("mimx.configs.image", "eval", [
            "protocol=finetune", f"checkpoint={tiny_run}", f"data.train={samples}/mnist",
            f"data.test={samples}/mnist_test", f"run.dir={run_dir}", "finetune.epochs=3", "finetune.warmup_epochs=1",
            "finetune.batch_size=64", "finetune.mixup=0.5", "data.label_fraction=0.2", "data.num_workers=1",
            "finetune.precision=bf16-pure", *extra]))

    straight = run(tmp_path / "straight")
    assert "stopped_at_epoch" in run(tmp_path / "resumed", "finetune.stop_at_epoch=1")
    saved = list((tmp_path / "resumed" / "checkpoints").glob("finetune-pretrained-*.pt"))
    assert len(saved) == 1 and torch.load(saved[0], weights_only=True)["epoch"] == 1
    resumed = run(tmp_path / "resumed")
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    assert resumed["test_top1"] == straight["test_top1"] and resumed["chosen"] == straight["chosen"]
    # the finished state answers a rerun without training again; another setup gets a file of its own
    assert run(tmp_path / "resumed")["test_top1"] == straight["test_top1"]
    run(tmp_path / "resumed", "finetune.epochs=1")
    assert len(list((tmp_path / "resumed" / "checkpoints").glob("finetune-pretrained-*.pt"))) == 2


def test_finetune_accumulation_equals_one_big_batch(samples, tiny_run, tmp_path):
    from mimx.modalities.image.evaluate import evaluate

    def run(name, *extra):  # fp32, no drop-path: two micro-batches of 32 must step as one batch of 64
        return evaluate(compose("mimx.configs.image", "eval", [
            "protocol=finetune", f"checkpoint={tiny_run}", f"data.train={samples}/mnist",
            f"data.test={samples}/mnist_test", f"run.dir={tmp_path / name}", "finetune.epochs=2",
            "finetune.warmup_epochs=1", "finetune.base_lr=1e-2", "finetune.drop_path=0", "finetune.precision=fp32",
            "data.label_fraction=0.2", "data.num_workers=1", "finetune.resume=never", *extra]))

    big = run("big", "finetune.batch_size=64")
    accum = run("accum", "finetune.batch_size=32", "finetune.accum_steps=2")
    for a, b in zip(big["history"], accum["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_top1"] == pytest.approx(b["val_top1"], abs=0.3)  # one digit of the val part may flip
    other = run("other", "finetune.batch_size=32")  # the same micro-batches without accumulation differ
    assert other["history"][-1]["train_loss"] != pytest.approx(big["history"][-1]["train_loss"], rel=1e-3)
