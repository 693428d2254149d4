"""Llama (incl. Llama-3 rope scaling): RMSNorm, rotary, grouped-query attention, SwiGLU MLP."""

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

# the Hugging Face config keys llama_config reads (families built on it add their own)
LLAMA_KEYS = (
    "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "max_position_embeddings", "hidden_act", "rms_norm_eps",
    "rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor", "tie_word_embeddings",
    "attention_bias", "mlp_bias",
)  # fmt: skip

_LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=10000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8,
)


def llama_config(hf: dict) -> dict:
    """Config fields shared by the Llama-style families (Llama, Mistral, Qwen2, ...)."""
    base, scaling = rope_settings(hf)
    n_heads = hf["num_attention_heads"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    return dict(
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_head=d_head,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        **context_fields(trained_context(hf, scaling)),
        act_fn=hf.get("hidden_act", "silu"),
        normalization="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        positional="rotary",
        rotary_base=base,
        rope_scaling=scaling,
        rotary_dim=partial_rotary_dim(hf, d_head),
        gated_mlp=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        qkv_bias=bool(hf.get("attention_bias", False)),
        attn_out_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


def llama_weights(cfg, prefix: str = "model.") -> dict:
    """Weight map shared by the Llama-style families; optional biases follow ``cfg``."""
    w = {"embed.weight": same(prefix + "embed_tokens.weight")}
    for i in range(cfg.n_layers):
        h, b = f"{prefix}layers.{i}.", f"blocks.{i}."
        a = h + "self_attn."
        w[b + "ln1.w"] = same(h + "input_layernorm.weight")
        w[b + "attn.qkv_weight"] = cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight")
        if cfg.qkv_bias:
            w[b + "attn.qkv_bias"] = cat(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias")
        w[b + "attn.o_weight"] = same(a + "o_proj.weight")
        if cfg.attn_out_bias:
            w[b + "attn.o_bias"] = same(a + "o_proj.bias")
        w[b + "ln2.w"] = same(h + "post_attention_layernorm.weight")
        w[b + "mlp.gate_weight"] = same(h + "mlp.gate_proj.weight")
        w[b + "mlp.in_weight"] = same(h + "mlp.up_proj.weight")
        w[b + "mlp.out_weight"] = same(h + "mlp.down_proj.weight")
        if cfg.mlp_bias:
            w[b + "mlp.gate_bias"] = same(h + "mlp.gate_proj.bias")
            w[b + "mlp.in_bias"] = same(h + "mlp.up_proj.bias")
            w[b + "mlp.out_bias"] = same(h + "mlp.down_proj.bias")
    w["ln_final.w"] = same(prefix + "norm.weight")
    if not cfg.tie_word_embeddings:
        w["unembed.weight"] = same("lm_head.weight")
    return w


ADAPTER = Adapter(
    name="llama",
    architectures=("LlamaForCausalLM",),
    model_types=("llama",),
    config=llama_config,
    weights=llama_weights,
    ignore=("rotary_emb.inv_freq",),
    handles=LLAMA_KEYS,
    ignores=("pretraining_tp",),
    tiny={  # Llama-3 rope scaling, grouped-query attention (4 query heads over 2 kv heads)
        "llama3": ("LlamaForCausalLM", dict(TINY_SHAPE, num_key_value_heads=2, rope_parameters=_LLAMA3_ROPE)),
    },
)
