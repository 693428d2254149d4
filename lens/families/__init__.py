"""The model families lens loads: one file per family, registered by being here.

Each module of this package (except ``base`` and ``_private`` helpers) declares ``ADAPTER =
Adapter(...)``: how a Hugging Face config and its tensor names map onto lens, and the family's tiny test
models (``Adapter.tiny``). This package only describes families and depends on :mod:`lens.config`
alone; :mod:`lens.loading` turns a Hugging Face config or model into a lens model.

Adding a family = one file in ``lens/families/`` (see docs/families.md): the registry below, the error
listing supported architectures and the parity tests (over :func:`tiny_configs`) pick it up.

>>> find_adapter({"architectures": ["LlamaForCausalLM"]}).name
'llama'
>>> tiny_configs()["gpt2"][0]
'GPT2LMHeadModel'
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
from typing import Any

from lens.config import TransformerConfig
from lens.families.base import Adapter, WeightSpec


def _discover() -> tuple[Adapter, ...]:
    """Every ``ADAPTER`` in this package (modules in name order), checked for clashes."""
    adapters: list[Adapter] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        adapter = getattr(module, "ADAPTER", None)
        if adapter is None:
            continue  # a helper module shared by families
        if not isinstance(adapter, Adapter):
            raise TypeError(f"{module.__name__}.ADAPTER must be a lens.families.base.Adapter, got {adapter!r}")
        adapters.append(adapter)
    owners: dict[tuple[str, str], str] = {}
    for adapter in adapters:
        keys = [("architecture", a) for a in adapter.architectures] + [("model_type", t) for t in adapter.model_types]
        keys += [("tiny variant", v) for v in adapter.tiny]
        for key in keys:
            if key in owners:
                raise ValueError(
                    f"{key[0]} {key[1]!r} is declared by both the {owners[key]} and {adapter.name} adapters"
                )
            owners[key] = adapter.name
    return tuple(adapters)


ADAPTERS: tuple[Adapter, ...] = _discover()


def supported_architectures() -> list[str]:
    return sorted(a for ad in ADAPTERS for a in ad.architectures)


def find_adapter(hf_config: dict[str, Any]) -> Adapter:
    """The adapter for a Hugging Face config dict (by ``architectures``, then ``model_type``)."""
    archs = hf_config.get("architectures") or []
    for ad in ADAPTERS:
        if any(a in ad.architectures for a in archs):
            return ad
    model_type = hf_config.get("model_type")
    for ad in ADAPTERS:
        if model_type in ad.model_types:
            return ad
    name = archs[0] if archs else model_type
    raise ValueError(
        f"unsupported architecture {name!r}; lens supports {supported_architectures()} "
        "(see docs/families.md to add one)"
    )


def config_from_hf(hf_config: Any, **overrides: Any) -> tuple[Adapter, TransformerConfig]:
    """(adapter, lens config) for a Hugging Face config object or dict."""
    hf = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    adapter = find_adapter(hf)
    return adapter, adapter.make_config(hf, **overrides)


def tiny_configs() -> dict[str, tuple[str, dict[str, Any]]]:
    """``{variant: (transformers model class name, config kwargs)}`` over every family's ``tiny`` (copies).

    The tiny random-weight test models: tests parametrise over these, so a new family file is covered
    without test edits.
    """
    return {name: (cls, copy.deepcopy(kwargs)) for ad in ADAPTERS for name, (cls, kwargs) in ad.tiny.items()}


__all__ = [
    "ADAPTERS",
    "Adapter",
    "WeightSpec",
    "config_from_hf",
    "find_adapter",
    "supported_architectures",
    "tiny_configs",
]
