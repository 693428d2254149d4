"""OPT: pre-LayerNorm blocks with learned positions offset by 2, ReLU MLP, biases everywhere, tied embeddings.

- The position table has ``max_position_embeddings + 2`` rows; OPT reads row ``position + 2``, so lens's
  ``W_pos`` is the table without its first two rows (positions are padding-aware in both).
- Refused with ``ValueError`` naming the key: ``do_layer_norm_before=False`` (post-LN: OPT-350m) and
  ``word_embed_proj_dim != hidden_size`` (its projections in and out of the embedding), and a config
  without the final LayerNorm (``_remove_final_layer_norm``).

Checkpoints: facebook/opt-125m, opt-1.3b, opt-2.7b, opt-6.7b, opt-13b, ... (not opt-350m).

>>> ADAPTER.config({"num_hidden_layers": 2, "hidden_size": 64, "ffn_dim": 128, "num_attention_heads": 4,
...                 "vocab_size": 100, "max_position_embeddings": 128})["act_fn"]
'relu'
"""

from __future__ import annotations

from lens.families.base import TINY_VOCAB, Adapter, WeightSpec, cat, same

OFFSET = 2  # OPTLearnedPositionalEmbedding.offset


def _config(hf: dict) -> dict:
    d = hf["hidden_size"]
    for key, ok in (
        ("do_layer_norm_before", hf.get("do_layer_norm_before", True)),
        ("word_embed_proj_dim", hf.get("word_embed_proj_dim", d) == d),
        ("_remove_final_layer_norm", not hf.get("_remove_final_layer_norm", False)),
        ("layer_norm_elementwise_affine", hf.get("layer_norm_elementwise_affine", True)),
    ):
        if not ok:
            raise ValueError(f"OPT with {key}={hf.get(key)!r} is not supported (hidden_size={d})")
    bias = bool(hf.get("enable_bias", True))
    return dict(
        n_layers=hf["num_hidden_layers"],
        d_model=d,
        n_heads=hf["num_attention_heads"],
        d_mlp=hf["ffn_dim"],
        d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        n_ctx_trained=hf["max_position_embeddings"],
        act_fn=hf.get("activation_function", "relu"),
        normalization="LN",
        eps=1e-5,
        positional="learned",
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bias,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


def _positions(name: str) -> WeightSpec:
    return WeightSpec((name,), lambda ts: ts[0][OFFSET:], f"rows {OFFSET}: (OPT's position offset)")


def _weights(cfg) -> dict:
    p = "model.decoder."
    w = {"embed.weight": same(p + "embed_tokens.weight"), "pos_embed.weight": _positions(p + "embed_positions.weight")}
    for i in range(cfg.n_layers):
        h, b = f"{p}layers.{i}.", f"blocks.{i}."
        a = h + "self_attn."
        w[b + "ln1.w"] = same(h + "self_attn_layer_norm.weight")
        w[b + "ln1.b"] = same(h + "self_attn_layer_norm.bias")
        w[b + "attn.qkv_weight"] = cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight")
        w[b + "attn.o_weight"] = same(a + "out_proj.weight")
        w[b + "ln2.w"] = same(h + "final_layer_norm.weight")
        w[b + "ln2.b"] = same(h + "final_layer_norm.bias")
        w[b + "mlp.in_weight"] = same(h + "fc1.weight")
        w[b + "mlp.out_weight"] = same(h + "fc2.weight")
        if cfg.qkv_bias:
            w[b + "attn.qkv_bias"] = cat(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias")
            w[b + "attn.o_bias"] = same(a + "out_proj.bias")
            w[b + "mlp.in_bias"] = same(h + "fc1.bias")
            w[b + "mlp.out_bias"] = same(h + "fc2.bias")
    w["ln_final.w"] = same(p + "final_layer_norm.weight")
    w["ln_final.b"] = same(p + "final_layer_norm.bias")
    if not cfg.tie_word_embeddings:
        w["unembed.weight"] = same("lm_head.weight")
    return w


ADAPTER = Adapter(
    name="opt",
    architectures=("OPTForCausalLM",),
    model_types=("opt",),
    config=_config,
    weights=_weights,
    handles=(
        "_remove_final_layer_norm",
        "activation_function",
        "do_layer_norm_before",
        "enable_bias",
        "ffn_dim",
        "hidden_size",
        "layer_norm_elementwise_affine",
        "max_position_embeddings",
        "num_attention_heads",
        "num_hidden_layers",
        "tie_word_embeddings",
        "vocab_size",
        "word_embed_proj_dim",
    ),
    tiny={
        "opt": (
            "OPTForCausalLM",
            dict(
                num_hidden_layers=2,
                hidden_size=32,
                ffn_dim=48,
                num_attention_heads=4,
                vocab_size=TINY_VOCAB,
                max_position_embeddings=64,
                word_embed_proj_dim=32,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=1,
            ),
        ),
    },
)
