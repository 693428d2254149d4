"""Per-family adapters (Hugging Face config and tensor names -> lens) and the shared converter.

Adding a family = one adapter file plus one line in ``ADAPTERS`` (see docs/families.md).

>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> model = from_hf_model(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4)))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from lens.adapters import gemma, gpt2, llama, mistral, neox, qwen2
from lens.adapters.base import Adapter, WeightSpec
from lens.config import TransformerConfig, resolve_dtype

ADAPTERS: tuple[Adapter, ...] = (
    gpt2.ADAPTER,
    llama.ADAPTER,
    mistral.ADAPTER,
    neox.ADAPTER,
    qwen2.ADAPTER,
    gemma.ADAPTER,
)


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


def _first(names: Iterable[str], n: int = 5) -> str:
    names = sorted(names)
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return f"{names[:n]}{more}"


@torch.no_grad()
def load_weights(
    model: torch.nn.Module,
    specs: dict[str, WeightSpec],
    get: Callable[[str], Tensor],
    available: Iterable[str],
    ignore: tuple[str, ...] = (),
) -> None:
    """Fill ``model``'s parameters from checkpoint tensors, one at a time (no second full copy).

    Raises ``ValueError`` naming the first few missing or unexpected checkpoint tensors, or the
    tensor whose shape does not match the config, before or instead of returning a half-filled model.
    """
    params = dict(model.named_parameters())
    no_spec = set(params) - set(specs)
    if no_spec:
        raise ValueError(f"adapter gives no source for lens parameters {_first(no_spec)}")
    available = set(available)
    needed = {s for spec in specs.values() for s in spec.sources}
    missing = needed - available
    if missing:
        raise ValueError(f"checkpoint is missing tensors {_first(missing)}")
    unexpected = {n for n in available - needed if not n.endswith(ignore)}
    if unexpected:
        raise ValueError(f"checkpoint has unexpected tensors {_first(unexpected)}")
    for name, spec in specs.items():
        if name not in params:
            continue
        value = spec.combine([get(s) for s in spec.sources])
        p = params[name]
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(
                f"checkpoint tensor(s) {list(spec.sources)} ({spec.describe}) have shape {tuple(value.shape)}, "
                f"but the config needs {tuple(p.shape)} for {name}"
            )
        p.copy_(value)  # copy_ converts dtype and device without a temporary


def config_from_hf(hf_config: Any, **overrides: Any) -> tuple[Adapter, TransformerConfig]:
    """(adapter, lens config) for a Hugging Face config object or dict."""
    hf = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    adapter = find_adapter(hf)
    return adapter, adapter.make_config(hf, **overrides)


def from_hf_model(
    hf_model: Any,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    tokenizer: Any = None,
    **config_overrides: Any,
):
    """Convert a ``transformers`` model object into a :class:`lens.HookedTransformer` (same weights)."""
    from lens.model import HookedTransformer

    if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
        raise TypeError(f"expected a transformers PreTrainedModel, got {type(hf_model).__name__}")
    if dtype is None:
        dtype = next(hf_model.parameters()).dtype
    adapter, cfg = config_from_hf(hf_model.config, dtype=resolve_dtype(dtype), device=device, **config_overrides)
    model = HookedTransformer(cfg, tokenizer=tokenizer, init=False)
    sd = hf_model.state_dict()
    names = adapter.source_names(sd)
    load_weights(model, adapter.weights(cfg), lambda n: sd[names[n]], names, adapter.ignored(cfg))
    return model


__all__ = ["ADAPTERS", "Adapter", "config_from_hf", "find_adapter", "from_hf_model", "load_weights"]
