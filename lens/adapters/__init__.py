"""Moved: the families to :mod:`lens.families`, ``from_hf_model`` and ``load_weights`` to :mod:`lens.loading`.

``lens.adapters`` keeps its old names (the same objects; ``from_hf_model`` is :func:`lens.loading.from_hf_model`
building a :class:`lens.HookedTransformer`, with its old signature), and ``lens.adapters.<family>`` is the
same module object as ``lens.families.<family>``:

>>> from lens.adapters import from_hf_model, find_adapter
>>> import lens.adapters.gpt2, lens.families.gpt2
>>> lens.adapters.gpt2 is lens.families.gpt2
True
"""

from lens.families import (  # noqa: F401  (old attribute paths)
    ADAPTERS,
    Adapter,
    WeightSpec,
    base,
    config_from_hf,
    find_adapter,
    gemma,
    gpt2,
    llama,
    mistral,
    neox,
    qwen2,
    supported_architectures,
)
from lens.loading import from_hf_model as _from_hf_model
from lens.loading import load_weights
from lens.model import HookedTransformer


def from_hf_model(hf_model, dtype=None, device=None, tokenizer=None, **config_overrides) -> HookedTransformer:
    """Convert a ``transformers`` model object into a :class:`lens.HookedTransformer` (same weights)."""
    return _from_hf_model(hf_model, dtype, device, tokenizer, model_class=HookedTransformer, **config_overrides)


__all__ = [
    "ADAPTERS",
    "Adapter",
    "WeightSpec",
    "config_from_hf",
    "find_adapter",
    "from_hf_model",
    "load_weights",
    "supported_architectures",
]
