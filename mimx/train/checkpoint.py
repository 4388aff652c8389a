"""Checkpoints: written atomically, read as data (``weights_only=True``), never as code."""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimx.config import UserError
from mimx.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or kill at any moment leaves either the previous file or the new
    one, never a partial file under ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or weights file (``.pt`` with ``weights_only=True``, or ``.safetensors``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return {"model": load_file(str(path), device=str(map_location))}
        # mapped, not read: processes that resume from one file share its pages (copy-on-write: never written
        # back); files in torch's legacy (pre-zip) format cannot be mapped and are read
        return torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        raise UserError(f"checkpoint {path} cannot be read ({reason}); it is not a mimx checkpoint or it is "
                        "damaged. Use another file, or train.resume=never to start over") from None


def resume_path(resume: str, run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a run continues from: ``run_dir/checkpoints/last.pt`` for ``auto`` when it exists, the
    given path otherwise, nothing for ``never``."""
    if resume == "never":
        return None
    if resume == "auto":
        path = Path(run_dir) / "checkpoints" / "last.pt"
        return path if path.exists() else None
    return Path(resume)


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random`` (timm's mixup draws from NumPy's global generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain values (weights_only-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> Path:
    """``state`` as a safetensors file, written whole or not at all, readable as the umask allows (safetensors
    alone creates files only their owner can read)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)
    return path


MODEL_KINDS = {"image": "an image", "video": "a video", "points": "a point-cloud", "multimodal": "a multi-modal"}


def _kind(modality: Any) -> str:
    return f"{MODEL_KINDS.get(modality, f'a {modality!r}')} model"


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: str | os.PathLike,
                     init: bool = False) -> None:
    """Refuse a checkpoint whose model architecture differs from the configured one.

    ``init``: the checkpoint is ``train.init``'s (the fix is then another init or matching model settings,
    not another run folder).
    """
    what = f"train.init={path}" if init else f"checkpoint {path}"
    if saved.get("modality") != current.get("modality"):
        fix = ("give train.init a run of this modality" if init
               else "use another run.dir or train.resume=never")
        raise UserError(f"{what} holds {_kind(saved.get('modality'))}, this run trains "
                        f"{_kind(current.get('modality'))}; {fix}")
    a, b = saved.get("architecture", {}), current.get("architecture", {})
    diff = [f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
    if diff:
        fix = ("Set the model to the init's settings (e.g. the same model= preset and model.* overrides it was "
               "trained with), or start from another train.init" if init else
               "Resume with the checkpoint's model settings, or start a new run (another run.dir, or "
               "train.resume=never)")
        raise UserError(f"{what} is from another model ({'; '.join(diff)}). {fix}")


def read_model(path: str | os.PathLike, weights: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Model weights and metadata (modality, architecture, model_config) from a checkpoint or weights file.

    Accepts a training checkpoint (``last.pt``), a run folder (its final
    ``model.safetensors``, else ``checkpoints/last.pt``) or a ``.safetensors`` file mimx wrote.
    ``weights=False``: the metadata only (weights files are not read; checkpoints are mapped, not read).
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "model.safetensors", path / "checkpoints" / "last.pt"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise UserError(f"{path} holds neither model.safetensors nor checkpoints/last.pt")
        path = found
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        if not path.exists():
            raise UserError(f"weights file {path} does not exist")
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if weights else {}  # noqa: SIM118 (no iterator)
        meta = {k: _maybe_json(v) for k, v in raw.items()}
        if "model_config" not in meta:
            raise UserError(f"{path} carries no mimx model config; export it from a mimx run folder or checkpoint")
        return state, meta
    state = load(path)
    if "meta" not in state or "model" not in state:
        raise UserError(f"{path} is not a mimx checkpoint (no 'meta'/'model' entries)")
    return state["model"], state["meta"]


def initial_weights(path: str | os.PathLike, current: dict[str, Any],
                    convert: Any = None) -> dict[str, torch.Tensor]:
    """Weights a new run starts from (``train.init``), checked against the configured architecture.

    ``path`` is a mimx run folder, checkpoint or weights file, or a folder another library saved (a
    ``config.json`` beside the weights, e.g. transformers' ``save_pretrained``), which
    ``convert(path) -> (state, meta)`` turns into mimx weights where the modality knows how.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"train.init={path} does not exist; give a mimx run folder, checkpoint or weights file")
    foreign = path.is_dir() and (path / "config.json").exists() and not (path / "checkpoints").exists()
    if foreign:
        if convert is None:
            raise UserError(f"train.init={path} is not a mimx run and this modality converts no other format; "
                            "give a mimx run folder, checkpoints/last.pt or model.safetensors")
        state, meta = convert(str(path))
    else:
        state, meta = read_model(path)
    check_compatible(meta, current, path, init=True)
    return state


def _maybe_json(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def load_trained(path: str | os.PathLike, modality: str, build: Any, what: str) -> Any:
    """A model of ``modality`` built by ``build(model_config)`` with the weights of a checkpoint or weights file.

    The input normalisation it was trained with is attached as ``model.normalization``
    (ImageNet statistics for files that do not record it). ``what`` names the model in errors.
    """
    state, meta = read_model(path)
    if meta.get("modality") != modality:
        raise UserError(f"{path} holds {_kind(meta.get('modality'))}, not {what}")
    model = build(meta["model_config"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not match its own model config (missing {missing[:4]}, unexpected "
                        f"{unexpected[:4]}); the file is damaged or was edited")
    model.normalization = meta.get("normalization") or {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return model.eval()


def save_encoder(out: str | os.PathLike, state: dict[str, torch.Tensor], info: dict[str, Any],
                 info_name: str = "config.json") -> Path:
    """An exported encoder: ``out/encoder.safetensors`` and its description ``out/<info_name>`` (JSON)."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, out / "encoder.safetensors")
    (out / info_name).write_text(json.dumps(info, indent=1))
    return out


def export_command(argv: list[str], prog: str, description: str, export: Any) -> int:
    """``mimx <modality> export CHECKPOINT OUT``: run ``export(checkpoint, out)`` and say what was written."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("checkpoint", help="run folder, checkpoints/last.pt or model.safetensors")
    parser.add_argument("out", help="output folder (encoder.safetensors + config.json)")
    args = parser.parse_args(argv)
    export(args.checkpoint, args.out)
    print(f"wrote {args.out}/encoder.safetensors and config.json")
    return 0
