"""Mistral: the Llama layout plus sliding-window attention on every layer."""

from __future__ import annotations

from lens.families.base import TINY_SHAPE, Adapter
from lens.families.llama import LLAMA_KEYS, llama_config, llama_weights


def _config(hf: dict) -> dict:
    fields = llama_config(hf)
    fields["window_size"] = hf.get("sliding_window")
    return fields


ADAPTER = Adapter(
    name="mistral",
    architectures=("MistralForCausalLM",),
    model_types=("mistral",),
    config=_config,
    weights=llama_weights,
    ignore=("rotary_emb.inv_freq",),
    handles=LLAMA_KEYS + ("sliding_window",),
    tiny={  # a window (5) shorter than the test sequences
        "mistral": ("MistralForCausalLM", dict(TINY_SHAPE, num_key_value_heads=2, sliding_window=5)),
    },
)
