"""OLMo-2: the Llama layout with post-norm-only blocks and q/k norms over the whole projection.

- Blocks (``use_normalization_after_only``): ``h = x + post_attention_layernorm(attn(x))``, then
  ``out = h + post_feedforward_layernorm(mlp(h))``; no norm before attention or the MLP. In lens
  ``post_attention_layernorm`` is ``ln1_post`` and ``post_feedforward_layernorm`` is ``ln2_post``; there is no
  ``ln1`` / ``ln2``.
- ``q_norm`` / ``k_norm`` (``use_qk_norm`` with ``qk_norm_scope="projection"``): one RMSNorm over the whole
  query projection (``n_heads * head_dim`` features) and one over the whole key projection
  (``n_key_value_heads * head_dim``), before the split into heads and before rotary (Qwen3's are per head).
- RMSNorm (``rms_norm_eps``), rotary (``rope_parameters`` / ``rope_theta``), SwiGLU MLP without biases,
  ``attention_bias`` on q/k/v and o, untied embeddings unless ``tie_word_embeddings``.

Checkpoints: allenai/OLMo-2-0425-1B, allenai/OLMo-2-1124-7B, allenai/OLMo-2-1124-13B (and their -SFT / -DPO /
-Instruct variants, the same architecture).

>>> cfg = ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
...                       "intermediate_size": 128, "vocab_size": 100})
>>> cfg["qk_norm_scope"], cfg["use_normalization_after_only"], cfg["eps"]
('projection', True, 1e-05)
"""

from __future__ import annotations

from lens.families.base import TINY_SHAPE, Adapter, qk_norm_weights, same
from lens.families.llama import LLAMA_KEYS, llama_config, llama_weights


def _config(hf: dict) -> dict:
    fields = llama_config(hf)
    fields.update(
        eps=hf.get("rms_norm_eps", 1e-5),  # Olmo2Config's default (llama_config assumes 1e-6)
        use_qk_norm=True,
        qk_norm_scope="projection",
        use_normalization_after_only=True,
        mlp_bias=False,  # Olmo2MLP has no biases whatever the config says
    )
    return fields


def _weights(cfg) -> dict:
    w = llama_weights(cfg)
    for i in range(cfg.n_layers):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        del w[b + "ln1.w"], w[b + "ln2.w"]  # llama's pre-norms; OLMo-2 has none
        w[b + "ln1_post.w"] = same(h + "post_attention_layernorm.weight")
        w[b + "ln2_post.w"] = same(h + "post_feedforward_layernorm.weight")
    return {**w, **qk_norm_weights(cfg)}


ADAPTER = Adapter(
    name="olmo2",
    architectures=("Olmo2ForCausalLM",),
    model_types=("olmo2",),
    config=_config,
    weights=_weights,
    ignore=("rotary_emb.inv_freq",),
    handles=LLAMA_KEYS,  # all read by llama_config (Olmo2Config has no key of its own)
    tiny={
        # grouped-query attention (4 query heads over 2 kv heads: q_norm over 32 features, k_norm over 16), untied
        "olmo2": ("Olmo2ForCausalLM", dict(TINY_SHAPE, num_key_value_heads=2)),
        # tied embeddings, q/k/v and output biases, multi-head attention (OLMo-2 1B / 7B / 13B are MHA)
        "olmo2_tied": ("Olmo2ForCausalLM", dict(TINY_SHAPE, tie_word_embeddings=True, attention_bias=True)),
    },
)
