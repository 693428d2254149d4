"""GPT-J: parallel attention + MLP from one LayerNorm, partial rotary on adjacent feature pairs, biased lm_head.

- One ``ln_1`` feeds both sublayers; lens's parallel block has ``ln1`` (attention) and ``ln2`` (MLP), both
  loaded from ``ln_1`` (equal values, separate parameters: editing one does not edit the other).
- Rotary on the first ``rotary_dim`` features of each head, pairing features ``(0, 1), (2, 3), ...``
  (``rotary_adjacent_pairs``), not the halves as in GPT-NeoX.
- q/k/v and the output projection have no biases; the MLP and the untied ``lm_head`` do.

Checkpoints: EleutherAI/gpt-j-6b (and fine-tunes of it).

>>> cfg = ADAPTER.config({"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100, "n_positions": 128,
...                       "rotary_dim": 8})
>>> cfg["rotary_dim"], cfg["rotary_adjacent_pairs"], cfg["parallel_attn_mlp"]
(8, True, True)
"""

from __future__ import annotations

from lens.families.base import TINY_VOCAB, Adapter, cat, context_fields, same


def _config(hf: dict) -> dict:
    d, n_heads = hf["n_embd"], hf["n_head"]
    return dict(
        n_layers=hf["n_layer"],
        d_model=d,
        n_heads=n_heads,
        d_mlp=hf.get("n_inner") or 4 * d,
        d_vocab=hf["vocab_size"],
        # transformers maps max_position_embeddings onto n_positions (GPTJConfig.attribute_map)
        **context_fields(hf.get("max_position_embeddings") or hf["n_positions"]),
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional="rotary",
        rotary_dim=hf.get("rotary_dim") or d // n_heads,
        rotary_adjacent_pairs=True,
        parallel_attn_mlp=True,
        qkv_bias=False,
        attn_out_bias=False,
        unembed_bias=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        default_prepend_bos=False,
    )


def _weights(cfg) -> dict:
    w = {"embed.weight": same("transformer.wte.weight")}
    for i in range(cfg.n_layers):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        a = h + "attn."
        for ln in ("ln1", "ln2"):  # one LayerNorm read by both sublayers
            w[f"{b}{ln}.w"] = same(h + "ln_1.weight")
            w[f"{b}{ln}.b"] = same(h + "ln_1.bias")
        w[b + "attn.qkv_weight"] = cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight")
        w[b + "attn.o_weight"] = same(a + "out_proj.weight")
        w[b + "mlp.in_weight"] = same(h + "mlp.fc_in.weight")
        w[b + "mlp.in_bias"] = same(h + "mlp.fc_in.bias")
        w[b + "mlp.out_weight"] = same(h + "mlp.fc_out.weight")
        w[b + "mlp.out_bias"] = same(h + "mlp.fc_out.bias")
    w["ln_final.w"] = same("transformer.ln_f.weight")
    w["ln_final.b"] = same("transformer.ln_f.bias")
    if not cfg.tie_word_embeddings:
        w["unembed.weight"] = same("lm_head.weight")
    w["unembed.bias"] = same("lm_head.bias")
    return w


ADAPTER = Adapter(
    name="gptj",
    architectures=("GPTJForCausalLM",),
    model_types=("gptj",),
    config=_config,
    weights=_weights,
    ignore=(".attn.bias", ".attn.masked_bias", "embed_positions"),
    handles=(
        "activation_function", "layer_norm_epsilon", "max_position_embeddings", "n_embd", "n_head", "n_inner",
        "n_layer", "n_positions", "rotary_dim", "tie_word_embeddings", "vocab_size",
    ),  # fmt: skip
    defaults={"rotary": True},  # GPT-J-6B's config says so; transformers reads no such key
    tiny={  # partial rotary: 4 of each head's 8 features, in adjacent pairs
        "gptj": (
            "GPTJForCausalLM",
            dict(n_layer=2, n_embd=32, n_head=4, vocab_size=TINY_VOCAB, n_positions=64, rotary_dim=4,
                 bos_token_id=0, eos_token_id=0),
        ),
    },
)  # fmt: skip
