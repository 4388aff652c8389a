"""The mimx command: help, resolved config, and one clear message per bad input."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from mimx.cli import main
from mimx.config import compose
from mimx.modalities.image.data import ImageDataConfig
from mimx.modalities.image.model import ImageMAEConfig
from mimx.train.engine import TrainConfig


def test_help_lists_modalities_and_actions(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "image" in out and "pretrain" in out and "shards" in out and "export" in out
    assert main(["image", "pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "vit_base" in out and "masking" in out and "demo" in out


def test_cfg_job_prints_resolved_config(capsys):
    assert main(["image", "pretrain", "experiment=demo", "train.batch_size=7", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["batch_size"] == 7
    assert cfg["model"]["img_size"] == cfg["data"]["image_size"] == 32


@pytest.mark.parametrize("config,section,cls", [("pretrain", "train", TrainConfig),
                                                ("pretrain", "data", ImageDataConfig),
                                                ("pretrain", "model", ImageMAEConfig)])
def test_yaml_presets_list_every_key_of_their_section(config, section, cls):
    cfg = compose("mimx.configs.image", config, [])
    names = {f.name for f in dataclasses.fields(cls)} - {"masking"}
    assert set(cfg[section].keys()) == names


@pytest.mark.parametrize("args,message", [
    (["train.lr_peak=1"], "unknown config key 'train.lr_peak'"),
    (["masking.ratio=1.2"], "mask ratio must be strictly between 0 and 1, got 1.2"),
    (["model=vit_tiny", "model.img_size=100"], "model.img_size (100, 100) is not divisible by model.patch_size=16"),
    (["data.shards=/nowhere/x-{000000..000003}.tar"], "4 of 4 shards not found: /nowhere/x-000000.tar"),
    (["train.batch_size=abc"], "config key train.batch_size must be int, got 'abc'"),
    (["model=vit_gigantic"], "Could not find 'model/vit_gigantic'"),
    (["train.steps=0"], "train.steps must be at least 1 (or null), got 0"),
    (["train.steps=null", "train.epochs=-1"], "train.epochs must be > 0 (or set train.steps), got -1"),
    (["train.betas=[0.9,1.5]"], "train.betas must be [beta1, beta2], each in [0, 1)"),
    (["data=shards", "data.shards=???"], "data.shards must be given (the config leaves it '???'): add data.shards="),
])
def test_bad_input_gets_one_clear_message(args, message, tmp_path, samples, capsys):
    argv = ["image", "pretrain", f"run.dir={tmp_path}", f"data.shards={samples}/mnist", *args]
    if args == ["train.lr_peak=1"]:  # once as a real process: nothing else (import warnings, tracebacks) on stderr
        proc = subprocess.run([sys.executable, "-m", "mimx", *argv], capture_output=True, text=True, timeout=300)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = main(argv), capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert err.count("\n") <= 2


@pytest.mark.parametrize("modality", ["image", "video", "points", "multimodal"])
def test_unset_mandatory_keys_are_named_before_anything_runs(modality, capsys):
    assert main([modality, "eval", "knn" if modality != "multimodal" else "semseg", "data.train=x"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint, data.test must be given" in err and "data.train" not in err.split("must be given")[0]
    assert "checkpoint=RUN_DIR" in err and "Traceback" not in err
    assert main([modality, "pretrain", "data=shards"]) == 2
    assert "data.shards must be given" in capsys.readouterr().err


def test_shard_spec_left_unset_is_not_globbed():
    from mimx.config import UserError
    from mimx.data.shards import expand_shards

    with pytest.raises(UserError, match="data.shards is not set"):
        expand_shards("???")


def test_unknown_modality_and_action(capsys):
    assert main(["audio", "pretrain"]) == 2
    assert "unknown modality 'audio'" in capsys.readouterr().err
    assert main(["image", "dance"]) == 2
    assert "unknown action 'dance'" in capsys.readouterr().err
