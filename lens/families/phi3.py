"""Phi-3 / Phi-4-mini: the Llama layout with fused ``qkv_proj`` and ``gate_up_proj`` and a sliding window.

- ``qkv_proj`` rows are ``[q; k; v]``, lens's own layout; ``gate_up_proj`` rows are ``[gate; up]`` and are
  split in two at load.
- ``sliding_window`` (when set) applies to every layer, as in ``transformers``.
- Partial rotary from ``partial_rotary_factor`` (``rope_parameters`` or top level; Phi-4-mini: 0.75).
- Long-context rope: ``longrope`` (legacy names ``su`` and ``yarn``, which ``transformers`` maps to
  ``longrope`` for Phi-3) with ``short_factor`` / ``long_factor`` per frequency; the switch length is the
  top-level ``original_max_position_embeddings`` (``transformers``' Phi-3 reads it there, default 4096, over
  any value inside the rope dict). Other rope types raise before any weight is read, as ``transformers``'
  Phi-3 config does.

Checkpoints: microsoft/Phi-3-mini-4k-instruct, Phi-3-medium-4k-instruct, and the longrope models
(Phi-3-mini-128k-instruct, Phi-3.5-mini-instruct, Phi-4-mini-instruct).

>>> cfg = ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
...                       "intermediate_size": 128, "vocab_size": 100, "sliding_window": 16})
>>> cfg["window_size"], cfg["gated_mlp"]
(16, True)
"""

from __future__ import annotations

from lens.families.base import TINY_SHAPE, Adapter, WeightSpec, same, with_rope_context
from lens.families.llama import LLAMA_KEYS, llama_config

_LEGACY_LONGROPE = ("su", "yarn")  # transformers' Phi3Config reads both as longrope
_ORIGINAL_CONTEXT = 4096  # Phi3Config's default original_max_position_embeddings


def _rope(scaling: dict | None, hf: dict) -> dict | None:
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in _LEGACY_LONGROPE:
        kind = "longrope"
    if kind != "longrope":
        raise ValueError(
            f"the phi3 config has rope type {kind!r}; Phi-3 rotates with the default rope or 'longrope' "
            f"(legacy names {', '.join(map(repr, _LEGACY_LONGROPE))}), as transformers' Phi3Config accepts"
        )
    out = with_rope_context({**{k: v for k, v in scaling.items() if k != "type"}, "rope_type": "longrope"}, hf)
    out["original_max_position_embeddings"] = hf.get("original_max_position_embeddings") or _ORIGINAL_CONTEXT
    return out


def _config(hf: dict) -> dict:
    fields = llama_config(hf)  # partial rotary included
    fields["rope_scaling"] = _rope(fields["rope_scaling"], hf)
    fields.update(qkv_bias=False, attn_out_bias=False, mlp_bias=False)
    if hf.get("sliding_window"):
        fields["window_size"] = int(hf["sliding_window"])
    return fields


def _half(name: str, first: bool) -> WeightSpec:
    def take(ts):
        rows = ts[0].shape[0] // 2
        return ts[0][:rows] if first else ts[0][rows:]

    return WeightSpec((name,), take, "first half of the rows" if first else "second half of the rows")


def _weights(cfg) -> dict:
    w = {"embed.weight": same("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        w[b + "ln1.w"] = same(h + "input_layernorm.weight")
        w[b + "attn.qkv_weight"] = same(h + "self_attn.qkv_proj.weight")
        w[b + "attn.o_weight"] = same(h + "self_attn.o_proj.weight")
        w[b + "ln2.w"] = same(h + "post_attention_layernorm.weight")
        w[b + "mlp.gate_weight"] = _half(h + "mlp.gate_up_proj.weight", first=True)
        w[b + "mlp.in_weight"] = _half(h + "mlp.gate_up_proj.weight", first=False)
        w[b + "mlp.out_weight"] = same(h + "mlp.down_proj.weight")
    w["ln_final.w"] = same("model.norm.weight")
    if not cfg.tie_word_embeddings:
        w["unembed.weight"] = same("lm_head.weight")
    return w


_TINY_LONGROPE = dict(  # rotary_dim = 8 * 0.5 = 4: two factors each
    rope_type="longrope", rope_theta=10000.0, short_factor=[1.0, 1.25], long_factor=[1.5, 4.0]
)

ADAPTER = Adapter(
    name="phi3",
    architectures=("Phi3ForCausalLM",),
    model_types=("phi3",),
    config=_config,
    weights=_weights,
    ignore=("rotary_emb.inv_freq",),
    handles=LLAMA_KEYS + ("sliding_window", "original_max_position_embeddings"),
    tiny={  # grouped-query attention and a sliding window of 5 on every layer
        "phi3": (
            "Phi3ForCausalLM",
            dict(TINY_SHAPE, num_key_value_heads=2, max_position_embeddings=64, sliding_window=5,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2),
        ),
        # longrope with partial rotary: the parity tests' 16 tokens pass original_max_position_embeddings=8,
        # so they run on the long factors (and the attention factor sqrt(1 + ln 8 / ln 8))
        "phi3_longrope": (
            "Phi3ForCausalLM",
            dict(TINY_SHAPE, num_key_value_heads=2, max_position_embeddings=64, original_max_position_embeddings=8,
                 partial_rotary_factor=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 rope_parameters=_TINY_LONGROPE),
        ),
    },
)  # fmt: skip
