"""GPT-Neo: GPT-2's layout with separate q/k/v projections, unscaled attention and alternating local layers.

- ``attention_types`` (``[[["global", "local"], 12]]``: the pattern and how often it repeats) marks the local
  layers, which see the last ``window_size`` keys (the query included).
- Attention scores are **not** divided by ``sqrt(d_head)`` (``attn_scale = 1``).
- q/k/v have no biases, the output projection and the MLP do; weights are ``nn.Linear`` (no transposes).

Checkpoints: EleutherAI/gpt-neo-125m, gpt-neo-1.3B, gpt-neo-2.7B; roneneldan/TinyStories-* models.

>>> cfg = ADAPTER.config({"num_layers": 4, "hidden_size": 64, "num_heads": 4, "vocab_size": 100,
...                       "max_position_embeddings": 128, "window_size": 8,
...                       "attention_types": [[["global", "local"], 2]]})
>>> cfg["window_layers"], cfg["attn_scale"]
((1, 3), 1.0)
"""

from __future__ import annotations

from lens.families.base import TINY_VOCAB, Adapter, cat, same


def _layer_kinds(hf: dict) -> list[str]:
    kinds = [
        kind
        for pattern, repeat in hf.get("attention_types", [[["global"], hf["num_layers"]]])
        for kind in pattern * repeat
    ]
    if len(kinds) != hf["num_layers"] or set(kinds) - {"global", "local"}:
        raise ValueError(
            f"attention_types={hf.get('attention_types')!r} must list 'global'/'local' for each of the "
            f"num_layers={hf['num_layers']} layers"
        )
    return kinds


def _config(hf: dict) -> dict:
    d = hf["hidden_size"]
    local = tuple(i for i, kind in enumerate(_layer_kinds(hf)) if kind == "local")
    fields = dict(
        n_layers=hf["num_layers"],
        d_model=d,
        n_heads=hf["num_heads"],
        d_mlp=hf.get("intermediate_size") or 4 * d,
        d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        n_ctx_trained=hf["max_position_embeddings"],
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional="learned",
        attn_scale=1.0,
        qkv_bias=False,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        default_prepend_bos=False,
    )
    if local:
        fields.update(window_size=int(hf.get("window_size", 256)), window_layers=local)
    return fields


def _weights(cfg) -> dict:
    w = {"embed.weight": same("transformer.wte.weight"), "pos_embed.weight": same("transformer.wpe.weight")}
    for i in range(cfg.n_layers):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        a = h + "attn.attention."
        w.update(
            {
                b + "ln1.w": same(h + "ln_1.weight"),
                b + "ln1.b": same(h + "ln_1.bias"),
                b + "attn.qkv_weight": cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
                b + "attn.o_weight": same(a + "out_proj.weight"),
                b + "attn.o_bias": same(a + "out_proj.bias"),
                b + "ln2.w": same(h + "ln_2.weight"),
                b + "ln2.b": same(h + "ln_2.bias"),
                b + "mlp.in_weight": same(h + "mlp.c_fc.weight"),
                b + "mlp.in_bias": same(h + "mlp.c_fc.bias"),
                b + "mlp.out_weight": same(h + "mlp.c_proj.weight"),
                b + "mlp.out_bias": same(h + "mlp.c_proj.bias"),
            }
        )
    w["ln_final.w"] = same("transformer.ln_f.weight")
    w["ln_final.b"] = same("transformer.ln_f.bias")
    if not cfg.tie_word_embeddings:
        w["unembed.weight"] = same("lm_head.weight")
    return w


ADAPTER = Adapter(
    name="gpt_neo",
    architectures=("GPTNeoForCausalLM",),
    model_types=("gpt_neo",),
    config=_config,
    weights=_weights,
    ignore=(".attn.attention.bias", ".attn.attention.masked_bias"),
    handles=(
        "activation_function",
        "attention_types",
        "hidden_size",
        "intermediate_size",
        "layer_norm_epsilon",
        "max_position_embeddings",
        "num_heads",
        "num_layers",
        "tie_word_embeddings",
        "vocab_size",
        "window_size",
    ),
    ignores=("attention_layers",),
    tiny={  # a global and a local (window 4) layer
        "gpt_neo": (
            "GPTNeoForCausalLM",
            dict(
                num_layers=2,
                hidden_size=32,
                num_heads=4,
                vocab_size=TINY_VOCAB,
                max_position_embeddings=64,
                attention_types=[[["global", "local"], 1]],
                window_size=4,
                bos_token_id=0,
                eos_token_id=0,
            ),
        ),
    },
)
