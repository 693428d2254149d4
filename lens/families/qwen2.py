"""Qwen2: the Llama layout with q/k/v biases (no output bias) and optional per-layer sliding windows.

Sliding windows follow ``transformers``: only when ``use_sliding_window`` is true, on the layers that
``layer_types`` marks ``"sliding_attention"`` (older configs: layers ``>= max_window_layers``).

>>> ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
...                 "intermediate_size": 128, "vocab_size": 100, "use_sliding_window": True,
...                 "sliding_window": 16, "max_window_layers": 1})["window_layers"]
(1,)
"""

from __future__ import annotations

from lens.families.base import TINY_SHAPE, Adapter, sliding_layers
from lens.families.llama import LLAMA_KEYS, llama_config, llama_weights

# the keys of a Qwen config (qwen_windows reads the last four)
QWEN_KEYS = LLAMA_KEYS + ("sliding_window", "use_sliding_window", "layer_types", "max_window_layers")


def qwen_windows(hf: dict, n_layers: int) -> dict:
    """``window_size`` / ``window_layers`` from a Qwen config (empty when no layer slides)."""
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    sliding = sliding_layers(hf, n_layers)
    if sliding is None:
        sliding = tuple(range(hf.get("max_window_layers", 28), n_layers))  # transformers default: 28
    return dict(window_size=int(window), window_layers=tuple(sliding)) if window and sliding else {}


def _config(hf: dict) -> dict:
    fields = llama_config(hf)
    fields.update(qkv_bias=True, attn_out_bias=False, mlp_bias=False)
    fields.update(qwen_windows(hf, fields["n_layers"]))
    return fields


ADAPTER = Adapter(
    name="qwen2",
    architectures=("Qwen2ForCausalLM",),
    model_types=("qwen2",),
    config=_config,
    weights=llama_weights,
    ignore=("rotary_emb.inv_freq",),
    handles=QWEN_KEYS,
    defaults={"use_mrope": False},
    tiny={  # tied embeddings; a sliding window on layer 1 only
        "qwen2": (
            "Qwen2ForCausalLM",
            dict(
                TINY_SHAPE,
                num_key_value_heads=2,
                tie_word_embeddings=True,
                use_sliding_window=True,
                sliding_window=5,
                max_window_layers=1,
            ),
        ),
    },
)
