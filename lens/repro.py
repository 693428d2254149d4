"""Reproducibility manifests: write down everything needed to get the same numbers again.

A manifest is a JSON file beside your results with the lens, torch, numpy and Python versions, the
model's source and the SHA-256 of its weights, dtype, device, the seeds you used, the hooks that were
active, and the command line. It holds no timestamps or host names, so re-running a deterministic script
rewrites it byte for byte.

``manifest["model"]`` holds:

* ``source``: where the weights came from, as recorded when the model was made (``model.provenance``, see
  :mod:`lens.provenance`): ``kind`` (``directory``, ``hub``, ``transformers_object``, ``zoo``, ``config``);
  the absolute ``path`` and the ``files`` read (names and sizes); for a hub name its ``repo_id``, the
  ``revision`` asked for and the resolved ``commit``; for a model object its ``name_or_path``; the
  ``processing`` flags, ``context_size_override`` and ``dtype`` asked for.
* ``weights_sha256``: the SHA-256 of the weights now (recomputed for every manifest);
  ``weights_sha256_at_load``: the weights' as made; ``edited_after_load``: True when the two differ (weights
  edited, processed or cast after loading; a ``note`` says so), None when there is no load-time hash.
* ``prepend_bos``: ``cfg.default_prepend_bos`` and its ``origin`` (``tokenizer``, ``family default``,
  ``override``, ``config``, or ``set after load`` when it was changed afterwards) with the ``reason``.
* ``dtype``, ``device``, ``name`` and the full ``config``.

>>> import lens, lens.repro
>>> model = lens.zoo.load("attn-only-2l")
>>> lens.repro.write_manifest("results/", model=model, seeds={"torch": 0}, hooks=["blocks.1.attn.hook_pattern"])
PosixPath('results/manifest.json')
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens.provenance import weights_sha256

__all__ = ["active_hooks", "manifest", "seed_everything", "weights_sha256", "write_manifest"]

EDITED_NOTE = (
    "the weights differ from those the model was made with (edited, processed or cast after loading): "
    "weights_sha256 is the weights' now, weights_sha256_at_load the source's"
)


def active_hooks(model: Any) -> list[str]:
    """Names of hook points that currently have hooks attached."""
    return sorted(name for name, hp in getattr(model, "hook_dict", {}).items() if hp.has_hooks)


def seed_everything(seed: int) -> dict[str, int]:
    """Seed torch, numpy and Python's random; returns the seeds for the manifest."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return {"python": seed, "numpy": seed, "torch": seed}


def manifest(
    model: Any = None,
    *,
    seeds: dict[str, int] | int | None = None,
    hooks: Iterable[str] | None = None,
    command: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    weights_sha256: str | None = None,
) -> dict[str, Any]:
    """The manifest as a dict (see :func:`write_manifest`).

    ``weights_sha256``: the weights' hash when the caller has just computed it (hashing a large model takes a
    while); by default it is computed here.
    """
    import lens

    data: dict[str, Any] = {
        "lens": lens.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "command": list(sys.argv if command is None else command),
        "seeds": {"torch": seeds} if isinstance(seeds, int) else (seeds or {}),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "torch_threads": torch.get_num_threads(),
    }
    if model is not None:
        data["model"] = _model_entry(model, weights_sha256)
        data["hooks"] = sorted(set(hooks)) if hooks is not None else active_hooks(model)
    elif hooks is not None:
        data["hooks"] = sorted(set(hooks))
    if extra:
        data["extra"] = extra
    return data


def _model_entry(model: Any, now: str | None = None) -> dict[str, Any]:
    """The manifest's ``model``: the load-time record (``model.provenance``) and the weights as they are now."""
    param = next(model.parameters())
    cfg = getattr(model, "cfg", None)
    record = getattr(model, "provenance", None)
    record = record if isinstance(record, dict) else {"kind": "unknown"}
    now, at_load = now or weights_sha256(model), record.get("weights_sha256")
    entry: dict[str, Any] = {
        "name": record.get("name") or getattr(cfg, "model_name", type(model).__name__),
        "source": {k: v for k, v in record.items() if k not in ("weights_sha256", "prepend_bos")},
        "weights_sha256": now,
        "weights_sha256_at_load": at_load,
        "edited_after_load": None if at_load is None else now != at_load,
        "prepend_bos": _prepend_bos(cfg, record.get("prepend_bos")),
        "dtype": str(param.dtype).removeprefix("torch."),
        "device": str(param.device),
        "config": cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else None,
    }
    if entry["edited_after_load"]:
        entry["note"] = EDITED_NOTE
    return entry


def _prepend_bos(cfg: Any, at_load: dict[str, Any] | None) -> dict[str, Any] | None:
    """``cfg.default_prepend_bos`` now and where it came from: the load-time choice while it still holds,
    else ``origin="set after load"`` with the load-time choice beside it."""
    value = getattr(cfg, "default_prepend_bos", None)
    if at_load is not None and at_load.get("value") == value:
        return dict(at_load)
    return {"value": value, "origin": "set after load", "at_load": at_load}


def write_manifest(path: str | Path, model: Any = None, **kwargs: Any) -> Path:
    """Write :func:`manifest` as JSON to ``path`` (a directory gets ``manifest.json``); returns the file."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest(model, **kwargs), indent=1, sort_keys=True, default=str) + "\n")
    return path
