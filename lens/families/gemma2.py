"""Gemma 2: Gemma's layout with sandwich norms, attention and final-logit soft caps, alternating local layers.

- Norms: ``input_layernorm`` (ln1), ``post_attention_layernorm`` (**after** attention: ``ln1_post``),
  ``pre_feedforward_layernorm`` (ln2), ``post_feedforward_layernorm`` (``ln2_post``); all ``(1 + w)`` RMSNorm.
- Soft caps: ``attn_logit_softcapping`` -> ``attn_scores_soft_cap`` (those layers run explicit attention),
  ``final_logit_softcapping`` -> ``output_logits_soft_cap``.
- ``query_pre_attn_scalar`` sets the score scale ``query_pre_attn_scalar ** -0.5`` (not ``d_head ** -0.5``).
- Local layers: ``layer_types`` (``"sliding_attention"``) or, in older configs, every even layer, with
  ``sliding_window`` keys.

Checkpoints: google/gemma-2-2b, gemma-2-9b, gemma-2-27b (and their -it variants), the models Gemma Scope SAEs
are trained on.

>>> cfg = ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "head_dim": 16,
...                       "intermediate_size": 128, "vocab_size": 100, "query_pre_attn_scalar": 16,
...                       "sliding_window": 8, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0})
>>> cfg["window_layers"], cfg["attn_scale"], cfg["output_logits_soft_cap"]
((0,), 0.25, 30.0)
"""

from __future__ import annotations

from lens.families.base import TINY_SHAPE, Adapter, plus_one, sliding_layers
from lens.families.gemma import GEMMA_KEYS, gemma_config, gemma_weights

# the keys gemma2_config reads
GEMMA2_KEYS = GEMMA_KEYS + (
    "layer_types", "sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
)  # fmt: skip


def _cap(value) -> float | None:
    return None if value is None else float(value)


def gemma2_config(hf: dict) -> dict:
    """Config fields shared by Gemma 2 and 3."""
    fields = gemma_config(hf)
    n = fields["n_layers"]
    local = sliding_layers(hf, n)
    if local is None:
        local = tuple(range(0, n, 2))  # transformers' Gemma 2 default: even layers slide
    window = hf.get("sliding_window")
    fields.update(
        use_normalization_before_and_after=True,
        attn_scale=float(hf.get("query_pre_attn_scalar", fields["d_head"])) ** -0.5,
        attn_scores_soft_cap=_cap(hf.get("attn_logit_softcapping")),
        output_logits_soft_cap=_cap(hf.get("final_logit_softcapping")),
        mlp_bias=False,
    )
    if window and local:
        fields.update(window_size=int(window), window_layers=local)
    return fields


def gemma2_weights(cfg) -> dict:
    """Gemma's weight map with the sandwich norms (shared by Gemma 2 and 3)."""
    w = gemma_weights(cfg)
    for i in range(cfg.n_layers):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        w[b + "ln1_post.w"] = plus_one(h + "post_attention_layernorm.weight")
        w[b + "ln2.w"] = plus_one(h + "pre_feedforward_layernorm.weight")
        w[b + "ln2_post.w"] = plus_one(h + "post_feedforward_layernorm.weight")
    return w


ADAPTER = Adapter(
    name="gemma2",
    architectures=("Gemma2ForCausalLM",),
    model_types=("gemma2",),
    config=gemma2_config,
    weights=gemma2_weights,
    ignore=("rotary_emb.inv_freq",),
    handles=GEMMA2_KEYS,
    ignores=("sliding_window_size",),
    defaults={"use_bidirectional_attention": False},
    tiny={
        # a local (window 4) and a global layer, soft caps small enough to bend O(1) scores and logits;
        # eager attention: Hugging Face's SDPA path cannot soft-cap
        "gemma2": (
            "Gemma2ForCausalLM",
            dict(
                TINY_SHAPE,
                num_key_value_heads=2,
                head_dim=8,
                query_pre_attn_scalar=16,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention"],
                attn_logit_softcapping=2.0,
                final_logit_softcapping=3.0,
                attn_implementation="eager",
            ),
        ),
    },
)
