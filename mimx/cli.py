"""The ``mimx`` command: ``mimx <modality> <action> [hydra overrides | arguments]``.

The only module of the core that reaches into ``mimx.modalities``, and only by
name, lazily.
"""

from __future__ import annotations

import importlib
import importlib.resources
import sys
from collections.abc import Sequence

from mimx.actions import Action
from mimx.config import UserError

MODALITIES = {
    "image": "images: MAE, SimMIM, MaskFeat and BEiT-style pretraining on ViT patches",
    "video": "videos: VideoMAE (tube masking, v2 dual masking) and MaskFeat on tubelets; torchcodec/decord/PyAV",
    "points": "point clouds: Point-MAE (FPS + kNN groups, Chamfer loss), .ply/.pcd/.obj/.stl/.off/.npy I/O",
    "multimodal": "RGB + depth + segmentation: MultiMAE (Dirichlet token budget, per-task output adapters)",
}


def _actions(modality: str) -> dict[str, Action]:
    return importlib.import_module(f"mimx.modalities.{modality}.actions").ACTIONS


def _usage() -> str:
    lines = ["usage: mimx <modality> <action> [overrides...]", "", "modalities and actions:"]
    for name, text in MODALITIES.items():
        lines.append(f"  {name:<11} {text}")
        for action, spec in _actions(name).items():
            lines.append(f"      {action:<10} {spec.help}")
    lines += ["", "Actions with a config take hydra overrides (key=value, group=option); add --cfg job to",
              "print the resolved config, --help for the config groups. Example:",
              "  mimx image pretrain experiment=demo train.batch_size=32"]
    return "\n".join(lines)


def _config_groups(modality: str, action: str, config: str) -> str:
    import yaml

    root = importlib.resources.files(f"mimx.configs.{modality}")
    defaults = yaml.safe_load((root / f"{config}.yaml").read_text()).get("defaults", [])
    groups = {k.split()[-1].lstrip("/") for d in defaults if isinstance(d, dict) for k in d}
    lines = [f"usage: mimx {modality} {action} [--cfg job] [key=value ...]"
             + (" [group=option ...]" if groups else ""), ""]
    lines.append(f"config: configs/{modality}/{config}.yaml" + ("; groups and options:" if groups else
                                                                ", no config groups"))
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and entry.name in groups:
            options = sorted(f.name[:-5] for f in entry.iterdir() if f.name.endswith(".yaml"))
            if options:
                lines.append(f"  {entry.name:<11} {', '.join(options)}")
    lines.append("\nSee every key with --cfg job; unknown keys are refused.")
    return "\n".join(lines)


def run(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from mimx import __version__

        print(f"mimx {__version__}")
        return 0
    modality = argv.pop(0)
    if modality not in MODALITIES:
        raise UserError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)} (mimx --help)")
    actions = _actions(modality)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: mimx {modality} <action> ...\n\nactions:")
        for name, spec in actions.items():
            print(f"  {name:<10} {spec.help}")
        return 0
    name = argv.pop(0)
    if name not in actions:
        raise UserError(f"unknown action {name!r} for {modality}; choose one of {', '.join(actions)}")
    action = actions[name]
    if action.config is None:
        return int(action.load()(argv) or 0)

    if "-h" in argv or "--help" in argv:
        print(_config_groups(modality, name, action.config))
        return 0
    print_cfg = False
    if "--cfg" in argv:
        i = argv.index("--cfg")
        if i + 1 >= len(argv) or argv[i + 1] not in ("job", "all"):
            raise UserError("--cfg takes 'job' (print the resolved config and exit)")
        del argv[i : i + 2]
        print_cfg = True
    if action.positional and argv and "=" not in argv[0] and not argv[0].startswith("-"):
        argv[0] = f"{action.positional}={argv[0]}"
    bad = [a for a in argv if a.startswith("-")]
    if bad:
        raise UserError(f"unknown option {bad[0]}; {modality} {name} takes hydra overrides like key=value")

    from omegaconf import OmegaConf

    from mimx.config import compose

    cfg = compose(f"mimx.configs.{modality}", action.config, argv)
    if print_cfg:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    if OmegaConf.select(cfg, "data.list") and OmegaConf.is_missing(cfg.data, "shards"):
        cfg.data.shards = None  # a file list instead of shards
    order = list(MISSING_HINTS)
    missing = sorted(OmegaConf.missing_keys(cfg), key=lambda k: (order.index(k) if k in order else len(order), k))
    if missing:
        command = " ".join(["mimx", modality, name] + [a.split("=", 1)[1] for a in argv[:1]
                                                        if action.positional and a.startswith(f"{action.positional}=")])
        raise UserError(f"{', '.join(missing)} must be given (the config leaves {'them' if len(missing) > 1 else 'it'} "
                        f"'???'): {_missing_hint(command, missing)}")
    action.load()(cfg)
    return 0


MISSING_HINTS = {
    "checkpoint": "checkpoint=RUN_DIR (a run folder, its checkpoints/last.pt or an exported model.safetensors)",
    "data.shards": "data.shards=PATH (your shards: folder, brace pattern, glob or pipe: URL), data.list=FILE "
                   "(video and point clouds: a 'path label' list of local files), or data=samples for the embedded "
                   "sample shards",
    "data.train": "data.train=SHARDS (labelled training shards; the validation split is carved from them)",
    "data.test": "data.test=SHARDS (labelled test shards, scored once at the end)",
}


def _missing_hint(command: str, keys: list[str]) -> str:
    hints = [MISSING_HINTS.get(k, f"{k}=VALUE") for k in keys]
    return f"add {'; '.join(hints)}; e.g. {command} " + " ".join(f"{k}=..." for k in keys)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"mimx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mimx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
