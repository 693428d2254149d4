"""Mixtral: the Mistral layout with a mixture-of-experts MLP (a router choosing 2 of 8 SwiGLU experts).

Router: softmax over the experts, the top ``num_experts_per_tok`` kept and renormalised
(``moe_renormalize``); see :mod:`lens.components.moe` for the hooks. Expert ``e`` of layer ``i`` is
``blocks.{i}.mlp.experts.{e}``, a gated MLP whose ``W_gate`` / ``W_in`` / ``W_out`` are the checkpoint's
``w1`` / ``w3`` / ``w2``. Checkpoint files name the experts one by one (``block_sparse_moe.experts.{e}.w1``);
``transformers`` 5 models in memory fuse them (``mlp.experts.gate_up_proj`` ``[experts, 2 * d_mlp, d_model]``),
which ``unpack`` splits back. ``router_jitter_noise`` only acts in training and is not used.
Checkpoints: mistralai/Mixtral-8x7B-v0.1 / -Instruct-v0.1, mistralai/Mixtral-8x22B-v0.1.

>>> cfg = ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
...                       "intermediate_size": 128, "vocab_size": 100, "num_local_experts": 8,
...                       "num_experts_per_tok": 2})
>>> cfg["num_experts"], cfg["experts_per_token"]
(8, 2)
"""

from __future__ import annotations

import re

from lens.families.base import TINY_SHAPE, Adapter, same
from lens.families.llama import LLAMA_KEYS, llama_config, llama_weights

_FUSED = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def _config(hf: dict) -> dict:
    fields = llama_config(hf)
    fields.update(
        window_size=hf.get("sliding_window"),
        num_experts=hf["num_local_experts"],
        experts_per_token=hf["num_experts_per_tok"],
        moe_renormalize=True,
    )
    return fields


def with_experts(w: dict, cfg, moe: str, gate: str, up: str, down: str) -> dict:
    """Replace a dense weight map's MLP entries by a router and per-expert weights, named as the files do:
    ``model.layers.{i}.{moe}.gate.weight`` (router) and ``...{moe}.experts.{e}.{gate|up|down}.weight``."""
    for i in range(cfg.n_layers):
        h, b = f"model.layers.{i}.{moe}.", f"blocks.{i}.mlp."
        for name in ("gate_weight", "in_weight", "out_weight"):
            del w[b + name]
        w[b + "router_weight"] = same(h + "gate.weight")
        for e in range(cfg.num_experts):
            x = f"{h}experts.{e}."
            w[f"{b}experts.{e}.gate_weight"] = same(f"{x}{gate}.weight")
            w[f"{b}experts.{e}.in_weight"] = same(f"{x}{up}.weight")
            w[f"{b}experts.{e}.out_weight"] = same(f"{x}{down}.weight")
    return w


def _weights(cfg) -> dict:
    return with_experts(llama_weights(cfg), cfg, "block_sparse_moe", "w1", "w3", "w2")


def fused_experts(moe: str, gate: str, up: str, down: str):
    """An ``Adapter.unpack`` for ``transformers`` 5's fused in-memory experts (``{layer}.mlp.experts.gate_up_proj``
    ``[experts, 2 * d_mlp, d_model]``, the gate's rows first, and ``down_proj``): it names each expert's slice
    as the checkpoint files do, ``{layer}.{moe}.experts.{e}.{gate|up|down}.weight``."""

    def unpack(name: str, cfg) -> dict:
        match = _FUSED.match(name)
        if match is None:
            return {}
        layer, kind = match.groups()
        d, out = cfg.d_mlp, {}
        for e in range(cfg.num_experts):
            x = f"{layer}.{moe}.experts.{e}."
            if kind == "gate_up_proj":
                out[f"{x}{gate}.weight"] = lambda t, e=e: t[e, :d]
                out[f"{x}{up}.weight"] = lambda t, e=e: t[e, d:]
            else:
                out[f"{x}{down}.weight"] = lambda t, e=e: t[e]
        return out

    return unpack


ADAPTER = Adapter(
    name="mixtral",
    architectures=("MixtralForCausalLM",),
    model_types=("mixtral",),
    config=_config,
    weights=_weights,
    ignore=("rotary_emb.inv_freq",),
    renames=((r"^(model\.layers\.\d+)\.mlp\.gate\.weight$", r"\1.block_sparse_moe.gate.weight"),),
    unpack=fused_experts("block_sparse_moe", "w1", "w3", "w2"),
    handles=LLAMA_KEYS + ("sliding_window", "num_local_experts", "num_experts_per_tok"),
    ignores=("router_jitter_noise",),
    tiny={
        # top-2 of 4 experts, grouped-query attention, a sliding window (5) shorter than the test sequences
        "mixtral": (
            "MixtralForCausalLM",
            dict(TINY_SHAPE, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=5),
        ),
    },
)
