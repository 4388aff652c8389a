"""Class labels of raw shard samples: ``cls`` text, or a field of the ``json`` member."""

from __future__ import annotations

import json
from typing import Any


def _as_label(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        raise ValueError(f"label {value!r} in {where} is not an integer")
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"label {text.strip()[:40]!r} in {where} is not an integer") from None


def read_label(sample: dict[str, Any], key: str = "cls") -> int:
    """Class id: ``cls`` (else json ``label``; -1 when neither) or, for another key, that json field."""
    if key == "cls" and "cls" in sample:
        return _as_label(sample["cls"], "cls")
    meta = json.loads(sample["json"]) if "json" in sample else {}
    field_name = "label" if key == "cls" else key
    if isinstance(meta, dict) and field_name in meta:
        return _as_label(meta[field_name], f"json[{field_name!r}]")
    if key == "cls":
        return -1
    raise KeyError(f"no json field {key!r} for data.label_key (sample has {sorted(k for k in sample)})")
