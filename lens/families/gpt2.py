"""GPT-2: learned positions, LayerNorm, fused Conv1D attention ``[in, out]``, tied embeddings."""

from __future__ import annotations

from lens.families.base import TINY_VOCAB, Adapter, same, transpose


def _config(hf: dict) -> dict:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported"
        )
    d = hf["n_embd"]
    return dict(
        n_layers=hf["n_layer"],
        d_model=d,
        n_heads=hf["n_head"],
        d_mlp=hf.get("n_inner") or 4 * d,
        d_vocab=hf["vocab_size"],
        n_ctx=hf["n_positions"],
        n_ctx_trained=hf["n_positions"],
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional="learned",
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        default_prepend_bos=False,
    )


def _weights(cfg) -> dict:
    p = "transformer.h.{}."
    w = {"embed.weight": same("transformer.wte.weight"), "pos_embed.weight": same("transformer.wpe.weight")}
    for i in range(cfg.n_layers):
        h, b = p.format(i), f"blocks.{i}."
        w.update(
            {
                b + "ln1.w": same(h + "ln_1.weight"),
                b + "ln1.b": same(h + "ln_1.bias"),
                b + "attn.qkv_weight": transpose(h + "attn.c_attn.weight"),
                b + "attn.qkv_bias": same(h + "attn.c_attn.bias"),
                b + "attn.o_weight": transpose(h + "attn.c_proj.weight"),
                b + "attn.o_bias": same(h + "attn.c_proj.bias"),
                b + "ln2.w": same(h + "ln_2.weight"),
                b + "ln2.b": same(h + "ln_2.bias"),
                b + "mlp.in_weight": transpose(h + "mlp.c_fc.weight"),
                b + "mlp.in_bias": same(h + "mlp.c_fc.bias"),
                b + "mlp.out_weight": transpose(h + "mlp.c_proj.weight"),
                b + "mlp.out_bias": same(h + "mlp.c_proj.bias"),
            }
        )
    w["ln_final.w"] = same("transformer.ln_f.weight")
    w["ln_final.b"] = same("transformer.ln_f.bias")
    if not cfg.tie_word_embeddings:
        w["unembed.weight"] = same("lm_head.weight")
    return w


ADAPTER = Adapter(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    model_types=("gpt2",),
    config=_config,
    weights=_weights,
    ignore=(".attn.bias", ".attn.masked_bias"),
    handles=(
        "activation_function",
        "layer_norm_epsilon",
        "n_embd",
        "n_head",
        "n_inner",
        "n_layer",
        "n_positions",
        "reorder_and_upcast_attn",
        "scale_attn_by_inverse_layer_idx",
        "tie_word_embeddings",
        "vocab_size",
    ),
    ignores=("n_ctx",),
    defaults={"scale_attn_weights": True},
    tiny={
        "gpt2": (
            "GPT2LMHeadModel",
            dict(n_layer=2, n_embd=32, n_head=4, vocab_size=TINY_VOCAB, n_positions=64, bos_token_id=0),
        ),
    },
)
