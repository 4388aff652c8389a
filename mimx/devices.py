"""Moving small host tensors to the training device without making the host wait.

A plain ``tensor.to("cuda")`` from pageable host memory synchronises the stream: the host waits for every
queued kernel, so a step that does it cannot queue its next kernels ahead of the GPU. Inputs drawn on the
host each step (masks, budgets) go through pinned memory asynchronously (:func:`to_device`); fixed
constants (normalisation statistics, windows) are copied once per device (:class:`DeviceConstant`).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DeviceConstant", "to_device"]


def to_device(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``t`` on ``device`` (``None``: where it is); host-to-GPU copies go through pinned memory, asynchronously."""
    if device is None:
        return t
    device = torch.device(device)
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class DeviceConstant:
    """A fixed host tensor with one copy per device, made on first use and reused by every later step."""

    def __init__(self, value: Any, dtype: torch.dtype | None = None) -> None:
        self.host = torch.as_tensor(value, dtype=dtype)
        self._copies: dict[torch.device, torch.Tensor] = {}

    def on(self, device: torch.device | str) -> torch.Tensor:
        device = torch.device(device)
        if device == self.host.device:
            return self.host
        if torch.compiler.is_compiling():  # a graph constant: no cache to guard on
            return self.host.to(device)
        copy = self._copies.get(device)
        if copy is None:
            copy = self._copies[device] = self.host.to(device)
        return copy

    def __getstate__(self) -> dict[str, Any]:  # data workers and pickles get the host tensor alone
        return {"host": self.host, "_copies": {}}

    def __repr__(self) -> str:
        return f"DeviceConstant({self.host.tolist()})"
