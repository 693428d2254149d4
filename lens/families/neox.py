"""GPT-NeoX / Pythia: LayerNorm, partial rotary, parallel attention + MLP, fused per-head QKV.

NeoX stores ``query_key_value`` interleaved per head: its output rows are ``[head, (q, k, v), d_head]``.
lens wants ``[q of every head; k ...; v ...]``, so the adapter regroups the rows (a reshape, no
arithmetic). ``use_parallel_residual=False`` checkpoints get the sequential block. Checkpoint files
call the unembedding ``embed_out`` while ``transformers`` modules call it ``lm_head``; both load.

>>> ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
...                 "intermediate_size": 256, "vocab_size": 100, "rotary_pct": 0.25})["rotary_dim"]
4
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from lens.families.base import (
    TINY_SHAPE,
    Adapter,
    WeightSpec,
    context_fields,
    rope_settings,
    same,
    trained_context,
)


def _config(hf: dict) -> dict:
    d, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    params = hf.get("rope_parameters") or {}
    base, scaling = rope_settings(hf)
    if "rope_theta" not in params and "rope_theta" not in hf:
        base = float(hf.get("rotary_emb_base", 10000.0))
    partial = params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    bias = bool(hf.get("attention_bias", True))
    return dict(
        n_layers=hf["num_hidden_layers"],
        d_model=d,
        n_heads=n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        **context_fields(trained_context(hf, scaling)),
        act_fn=hf.get("hidden_act", "gelu"),
        normalization="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        positional="rotary",
        rotary_base=base,
        rope_scaling=scaling,
        rotary_dim=int(d // n_heads * partial),
        parallel_attn_mlp=bool(hf.get("use_parallel_residual", True)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=True,
    )


def per_head_qkv(name: str, n_heads: int, d_head: int) -> WeightSpec:
    """Regroup a fused QKV stored as ``[head, 3, d_head, ...]`` into ``[3, head, d_head, ...]``."""

    def combine(ts: list[Tensor]) -> Float[Tensor, "qkv_rows *rest"]:
        t = ts[0]
        if t.shape[0] != 3 * n_heads * d_head:
            raise ValueError(
                f"checkpoint tensor {name} has shape {tuple(t.shape)}, but the config needs "
                f"{3 * n_heads * d_head} rows (3 x n_heads={n_heads} x d_head={d_head})"
            )
        rest = t.shape[1:]
        return t.view(n_heads, 3, d_head, *rest).transpose(0, 1).reshape(3 * n_heads * d_head, *rest)

    return WeightSpec((name,), combine, "regroup per-head q/k/v")


def _weights(cfg) -> dict:
    w = {"embed.weight": same("gpt_neox.embed_in.weight")}
    for i in range(cfg.n_layers):
        h, b = f"gpt_neox.layers.{i}.", f"blocks.{i}."
        w[b + "ln1.w"] = same(h + "input_layernorm.weight")
        w[b + "ln1.b"] = same(h + "input_layernorm.bias")
        w[b + "attn.qkv_weight"] = per_head_qkv(h + "attention.query_key_value.weight", cfg.n_heads, cfg.d_head)
        if cfg.qkv_bias:
            w[b + "attn.qkv_bias"] = per_head_qkv(h + "attention.query_key_value.bias", cfg.n_heads, cfg.d_head)
        w[b + "attn.o_weight"] = same(h + "attention.dense.weight")
        if cfg.attn_out_bias:
            w[b + "attn.o_bias"] = same(h + "attention.dense.bias")
        w[b + "ln2.w"] = same(h + "post_attention_layernorm.weight")
        w[b + "ln2.b"] = same(h + "post_attention_layernorm.bias")
        w[b + "mlp.in_weight"] = same(h + "mlp.dense_h_to_4h.weight")
        w[b + "mlp.in_bias"] = same(h + "mlp.dense_h_to_4h.bias")
        w[b + "mlp.out_weight"] = same(h + "mlp.dense_4h_to_h.weight")
        w[b + "mlp.out_bias"] = same(h + "mlp.dense_4h_to_h.bias")
    w["ln_final.w"] = same("gpt_neox.final_layer_norm.weight")
    w["ln_final.b"] = same("gpt_neox.final_layer_norm.bias")
    if not cfg.tie_word_embeddings:
        w["unembed.weight"] = same("embed_out.weight")
    return w


ADAPTER = Adapter(
    name="gpt_neox",
    architectures=("GPTNeoXForCausalLM",),
    model_types=("gpt_neox",),
    config=_config,
    weights=_weights,
    ignore=(".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq"),
    tied_unembed=("embed_out.weight",),
    renames=((r"^lm_head\.", "embed_out."),),
    handles=(
        "attention_bias",
        "hidden_act",
        "hidden_size",
        "intermediate_size",
        "layer_norm_eps",
        "max_position_embeddings",
        "num_attention_heads",
        "num_hidden_layers",
        "rope_parameters",
        "rope_scaling",
        "rope_theta",
        "rotary_emb_base",
        "rotary_pct",
        "partial_rotary_factor",
        "tie_word_embeddings",
        "use_parallel_residual",
        "vocab_size",
    ),
    tiny={
        "neox": ("GPTNeoXForCausalLM", dict(TINY_SHAPE, num_attention_heads=2, rotary_pct=0.25)),  # parallel
        "neox-seq": ("GPTNeoXForCausalLM", dict(TINY_SHAPE, use_parallel_residual=False, attention_bias=False)),
    },
)
