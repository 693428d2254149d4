"""Phi (1, 1.5, 2): parallel attention + MLP from one LayerNorm, partial rotary, biases everywhere.

- One ``input_layernorm`` feeds both sublayers (loaded into lens's ``ln1`` and ``ln2``: equal values,
  separate parameters); attention output is ``dense``; the MLP is ``fc1`` -> GELU -> ``fc2``.
- Partial rotary on the first ``partial_rotary_factor * d_head`` features (the halves convention), read from
  ``rope_parameters`` (transformers 5) or the top level (transformers 4).
- ``lm_head`` is untied and has a bias. ``qk_layernorm=True`` (a LayerNorm on queries and keys) is refused.

Checkpoints: microsoft/phi-1, phi-1_5, phi-2. (Phi-3 is a different architecture, ``Phi3ForCausalLM``.)

>>> cfg = ADAPTER.config({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
...                       "num_attention_heads": 4, "vocab_size": 100, "partial_rotary_factor": 0.5})
>>> cfg["rotary_dim"], cfg["parallel_attn_mlp"], cfg["unembed_bias"]
(8, True, True)
"""

from __future__ import annotations

from lens.families.base import (
    TINY_SHAPE,
    Adapter,
    cat,
    context_fields,
    partial_rotary_dim,
    rope_settings,
    same,
    trained_context,
)


def _config(hf: dict) -> dict:
    if hf.get("qk_layernorm"):
        raise ValueError("Phi with qk_layernorm=True (a LayerNorm on queries and keys) is not supported")
    n_heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or n_heads
    d_head = hf["hidden_size"] // n_heads
    base, scaling = rope_settings(hf)
    return dict(
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        n_heads=n_heads,
        n_key_value_heads=kv,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        **context_fields(trained_context(hf, scaling)),
        act_fn=hf.get("hidden_act", "gelu_new"),
        normalization="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        positional="rotary",
        rotary_base=base,
        rope_scaling=scaling,
        rotary_dim=partial_rotary_dim(hf, d_head, default=0.5),
        parallel_attn_mlp=True,
        unembed_bias=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def _weights(cfg) -> dict:
    w = {"embed.weight": same("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        a = h + "self_attn."
        for ln in ("ln1", "ln2"):  # one LayerNorm read by both sublayers
            w[f"{b}{ln}.w"] = same(h + "input_layernorm.weight")
            w[f"{b}{ln}.b"] = same(h + "input_layernorm.bias")
        w[b + "attn.qkv_weight"] = cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight")
        w[b + "attn.qkv_bias"] = cat(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias")
        w[b + "attn.o_weight"] = same(a + "dense.weight")
        w[b + "attn.o_bias"] = same(a + "dense.bias")
        w[b + "mlp.in_weight"] = same(h + "mlp.fc1.weight")
        w[b + "mlp.in_bias"] = same(h + "mlp.fc1.bias")
        w[b + "mlp.out_weight"] = same(h + "mlp.fc2.weight")
        w[b + "mlp.out_bias"] = same(h + "mlp.fc2.bias")
    w["ln_final.w"] = same("model.final_layernorm.weight")
    w["ln_final.b"] = same("model.final_layernorm.bias")
    if not cfg.tie_word_embeddings:
        w["unembed.weight"] = same("lm_head.weight")
    w["unembed.bias"] = same("lm_head.bias")
    return w


ADAPTER = Adapter(
    name="phi",
    architectures=("PhiForCausalLM",),
    model_types=("phi",),
    config=_config,
    weights=_weights,
    ignore=("rotary_emb.inv_freq",),
    handles=(
        "hidden_act",
        "hidden_size",
        "intermediate_size",
        "layer_norm_eps",
        "max_position_embeddings",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "partial_rotary_factor",
        "qk_layernorm",
        "rope_parameters",
        "rope_scaling",
        "rope_theta",
        "tie_word_embeddings",
        "vocab_size",
    ),
    tiny={"phi": ("PhiForCausalLM", dict(TINY_SHAPE, max_position_embeddings=64))},  # partial rotary: 4 of 8
)
