"""Reproducibility manifests: write down everything needed to get the same numbers again.

A manifest is a JSON file beside your results with the lens, torch, numpy and Python versions, the
model's source and the SHA-256 of its weights, dtype, device, the seeds you used, the hooks that were
active, and the command line. It holds no timestamps or host names, so re-running a deterministic script
rewrites it byte for byte.

>>> import lens, lens.repro
>>> model = lens.zoo.load("attn-only-2l")
>>> lens.repro.write_manifest("results/", model=model, seeds={"torch": 0}, hooks=["blocks.1.attn.hook_pattern"])
PosixPath('results/manifest.json')
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameters and persistent buffers (name, dtype, shape, bytes), sorted by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


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
) -> dict[str, Any]:
    """The manifest as a dict (see :func:`write_manifest`)."""
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
        param = next(model.parameters())
        source = getattr(model, "weights_source", None) or {}
        cfg = getattr(model, "cfg", None)
        data["model"] = {
            "name": source.get("name") or getattr(cfg, "model_name", type(model).__name__),
            "source": source.get("path", "in-memory"),
            "weights_sha256": source.get("sha256") or weights_sha256(model),
            "dtype": str(param.dtype).removeprefix("torch."),
            "device": str(param.device),
            "config": cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else None,
        }
        data["hooks"] = sorted(set(hooks)) if hooks is not None else active_hooks(model)
    elif hooks is not None:
        data["hooks"] = sorted(set(hooks))
    if extra:
        data["extra"] = extra
    return data


def write_manifest(path: str | Path, model: Any = None, **kwargs: Any) -> Path:
    """Write :func:`manifest` as JSON to ``path`` (a directory gets ``manifest.json``); returns the file."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest(model, **kwargs), indent=1, sort_keys=True, default=str) + "\n")
    return path
