"""How a modality declares its CLI actions (read by ``mimx.cli`` without importing heavy code)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Action:
    """One ``mimx <modality> <action>`` command.

    ``target`` is ``"module:function"``. With ``config`` set, the action takes
    hydra overrides and the function receives the composed config; otherwise it
    receives the remaining command-line arguments (argparse style). With
    ``positional`` set, a first bare word is that config key's value
    (``mimx image eval knn ...`` is ``protocol=knn``).
    """

    help: str
    target: str
    config: str | None = None
    positional: str | None = None

    def load(self) -> Callable[..., Any]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)
