"""Gemma (1): the Llama layout with GeGLU, sqrt(d_model)-scaled embeddings, (1 + w) RMSNorm, tied unembed.

``head_dim`` is independent of ``d_model / n_heads`` (Gemma-7B: 16 x 256 != 3072). Norm weights are
stored as offsets from 1 and loaded as ``1 + w`` (the ``plus_one`` spec). The legacy ``"gelu"`` in
released configs means the tanh approximation, as in ``transformers``.

>>> ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "head_dim": 32,
...                 "intermediate_size": 128, "vocab_size": 100, "hidden_act": "gelu"})["act_fn"]
'gelu_pytorch_tanh'
"""

from __future__ import annotations

from lens.families.base import TINY_SHAPE, Adapter, plus_one
from lens.families.llama import LLAMA_KEYS, llama_config, llama_weights

GEMMA_KEYS = LLAMA_KEYS + ("hidden_activation",)  # the keys gemma_config reads


def gemma_config(hf: dict) -> dict:
    """Config fields shared by the Gemma families."""
    fields = llama_config(hf)
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    fields.update(
        act_fn="gelu_pytorch_tanh" if act == "gelu" else act,
        embedding_multiplier=float(hf["hidden_size"]) ** 0.5,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )
    return fields


def gemma_weights(cfg) -> dict:
    """Weight map shared by the Gemma families: Llama's names, norms stored as offsets from 1."""
    w = llama_weights(cfg)
    for name, spec in w.items():
        if name.endswith((".ln1.w", ".ln2.w")) or name == "ln_final.w":
            w[name] = plus_one(spec.sources[0])
    return w


ADAPTER = Adapter(
    name="gemma",
    architectures=("GemmaForCausalLM",),
    model_types=("gemma",),
    config=gemma_config,
    weights=gemma_weights,
    ignore=("rotary_emb.inv_freq",),
    handles=GEMMA_KEYS,
    defaults={"use_bidirectional_attention": False},
    tiny={  # multi-query attention, head_dim 16 != d_model / n_heads
        "gemma": ("GemmaForCausalLM", dict(TINY_SHAPE, num_key_value_heads=1, head_dim=16)),
    },
)
