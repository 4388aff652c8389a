"""Fully sharded data parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``).

Every transformer block (a timm ``Block``, or any module with ``shard_unit =
True``) is its own unit and the rest of the model (embeddings, norms, heads) the
root unit: each process keeps 1/world of the weights,
gradients and AdamW state, and gathers a block's weights just before it runs.
Checkpoints stay in the one format every strategy writes and reads: full
tensors, optimizer state keyed by parameter index in group order, so a run
sharded over N processes continues on one process, under DDP, or over M
processes, and back.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from mimx.config import UserError

STRATEGIES = ("auto", "ddp", "fsdp")


def resolve_strategy(spec: str, world: int) -> str:
    """``single`` for one process, else ``ddp`` (``auto``, ``ddp``) or ``fsdp``."""
    if spec not in STRATEGIES:
        raise UserError(f"train.strategy={spec!r}; choose auto (DDP), ddp or fsdp")
    if world == 1:
        return "single"
    return "fsdp" if spec == "fsdp" else "ddp"


def cast_buffers(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point buffers to ``dtype`` except a module's ``constant_buffers`` (a codebook stays fp32)."""
    for module in model.modules():
        keep = set(getattr(module, "constant_buffers", ()))
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_floating_point() and name not in keep:
                module._buffers[name] = buf.to(dtype)


def shard(model: nn.Module, param_dtype: torch.dtype | None = None) -> int:
    """Shard ``model`` in place over the default process group; returns the number of units.

    With ``param_dtype`` the sharded fp32 weights are the master copy and each
    unit computes with weights gathered in ``param_dtype``; gradients are
    reduced in fp32.
    """
    # FSDP warns once per model when an output is a view: the engine reads only ``.loss`` and never edits
    # outputs in place, which is what the warning is about
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    units = [m for m in model.modules() if isinstance(m, Block) or getattr(m, "shard_unit", False)]
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return len(units) + 1


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on the main process (CPU tensors), ``{}`` elsewhere. Collective."""
    return get_model_state_dict(model, options=_FULL)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict that every process holds into the sharded ``model``."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    """The optimizer's whole state on the main process in ``optimizer.state_dict()``'s layout. Collective.

    ``names`` lists the parameters in the optimizer's order (group after group),
    so the indices match what an unsharded run writes.
    """
    full = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if not full:
        return {}
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[name]: value for name, value in full["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         names: list[str]) -> None:
    """Load an optimizer state in ``optimizer.state_dict()``'s layout (every process holds it) into shards."""
    groups = state["param_groups"]
    if sum(len(g["params"]) for g in groups) != len(names):
        raise UserError(f"the checkpoint's optimizer holds {sum(len(g['params']) for g in groups)} parameters, "
                        f"this model trains {len(names)}; resume with the checkpoint's model settings")
    named = {"state": {names[i]: value for i, value in state["state"].items()},
             "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
