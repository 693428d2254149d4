"""Mistral: the Llama layout plus sliding-window attention on every layer."""

from __future__ import annotations

from lens.adapters.base import Adapter
from lens.adapters.llama import llama_config, llama_weights


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
)
