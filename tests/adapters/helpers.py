"""Tiny random-weight Hugging Face models, saved once per session to temporary directories.

Weights are re-drawn at O(1) scale (matrices ~ N(0, 1/fan), 1-D tensors = init + 0.1 N(0, 1)) so
logits are O(1) and a parity check at atol 1e-4 means something.
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

VOCAB = 96
_ROOT = Path(tempfile.mkdtemp(prefix="lens-adapters-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
_CACHE: dict[tuple[str, torch.dtype], tuple[Path, torch.nn.Module]] = {}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():  # tied weights appear once
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim == 1:
            p.add_(0.1 * noise)
        else:
            p.copy_(noise / p.shape[-1] ** 0.5)
    return model


def build_hf(spec: tuple[str, dict], seed: int = 0) -> torch.nn.Module:
    """``spec`` = (``transformers`` model class name, config kwargs)."""
    transformers = pytest.importorskip("transformers")
    model_cls, kwargs = spec
    cls = getattr(transformers, model_cls)
    torch.manual_seed(seed)
    model = cls(cls.config_class(**kwargs))
    return randomize(model, seed).eval()


def saved(name: str, spec: tuple[str, dict], dtype: torch.dtype = torch.float32) -> tuple[Path, torch.nn.Module]:
    """(directory, HF model in ``dtype``) for a family, built and saved once per session."""
    key = (name, dtype)
    if key not in _CACHE:
        base = _CACHE[(name, torch.float32)][1] if (name, torch.float32) in _CACHE else build_hf(spec)
        model = base if dtype == torch.float32 else copy.deepcopy(base).to(dtype)
        directory = _ROOT / f"{name}-{str(dtype).removeprefix('torch.')}"
        model.save_pretrained(directory)
        _CACHE[key] = (directory, model)
    return _CACHE[key]


def reloaded(directory: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``transformers``' own load of a saved directory in ``dtype`` (the reference for dtype handling)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()


def copy_dir(directory: Path, dest: Path) -> Path:
    """A private copy of a saved checkpoint that a test may damage."""
    shutil.copytree(directory, dest)
    return dest


def tokens(batch: int = 2, pos: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))
