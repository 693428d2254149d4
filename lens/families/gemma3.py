"""Gemma 3 (text): Gemma 2's sandwich norms and query scale, plus q/k norms and a local rotary base.

- Five local (sliding-window) layers to one global layer (``layer_types``); local layers rotate with their
  own base (``rope_parameters["sliding_attention"]`` or the older ``rope_local_base_freq``: 10 000) and no
  scaling, global layers with ``rope_parameters["full_attention"]`` (or ``rope_theta`` / ``rope_scaling``:
  1 000 000, linear scaling by 8 in the 4B+ models).
- ``q_norm`` / ``k_norm``: per-head ``(1 + w)`` RMSNorm (``use_qk_norm``), then rotary.
- No soft caps in the released configs (read when present); ``use_bidirectional_attention`` is refused.

Checkpoints: google/gemma-3-1b-pt / -it (``Gemma3ForCausalLM``); the larger Gemma 3 models are multimodal
(``Gemma3ForConditionalGeneration``): their language model loads through ``gemma3_multimodal.py``.

>>> cfg = ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "head_dim": 16,
...                       "intermediate_size": 128, "vocab_size": 100, "query_pre_attn_scalar": 16,
...                       "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
...                       "rope_theta": 1e6, "rope_local_base_freq": 1e4})
>>> cfg["window_layers"], cfg["rotary_base"], cfg["rotary_base_local"], cfg["use_qk_norm"]
((0,), 1000000.0, 10000.0, True)
"""

from __future__ import annotations

from lens.families.base import TINY_SHAPE, Adapter, plus_one, qk_norm_weights, with_rope_context
from lens.families.gemma2 import GEMMA2_KEYS, gemma2_config, gemma2_weights


def _rope(hf: dict) -> tuple[float, dict | None, float]:
    """(global base, global scaling or None, local base) from transformers-5 or -4 style configs."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:  # transformers 5: one entry per layer type
        full, local = dict(params["full_attention"] or {}), dict(params.get("sliding_attention") or {})
        if local.get("rope_type", "default") != "default":
            raise ValueError(
                f"rope_parameters['sliding_attention'] has rope_type={local['rope_type']!r}; lens rotates "
                "Gemma 3's local layers without scaling only"
            )
        base, local_base = float(full.get("rope_theta", 1e6)), float(local.get("rope_theta", 1e4))
        scaling = full if full.get("rope_type", "default") != "default" else None
    else:
        base, local_base = float(hf.get("rope_theta", 1e6)), float(hf.get("rope_local_base_freq", 1e4))
        scaling = hf.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
    if scaling is not None:
        scaling = with_rope_context({k: v for k, v in scaling.items() if k != "rope_theta"}, hf)
    return base, scaling, local_base


def _config(hf: dict) -> dict:
    if hf.get("use_bidirectional_attention"):
        raise ValueError("use_bidirectional_attention=True (Gemma 3 as an encoder) is not supported: lens is causal")
    if not hf.get("layer_types"):  # configs before transformers 4.53: every `sliding_window_pattern`-th is global
        pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
        kinds = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(hf["num_hidden_layers"])
        ]
        hf = {**hf, "layer_types": kinds}
    fields = gemma2_config(hf)
    base, scaling, local_base = _rope(hf)
    fields.update(use_qk_norm=True, rotary_base=base, rope_scaling=scaling)
    if fields.get("window_layers"):  # a local base only matters when some layers are local
        fields["rotary_base_local"] = local_base
    return fields


def _weights(cfg) -> dict:
    return {**gemma2_weights(cfg), **qk_norm_weights(cfg, plus_one)}


ADAPTER = Adapter(
    name="gemma3",
    architectures=("Gemma3ForCausalLM",),
    model_types=("gemma3_text",),
    config=_config,
    weights=_weights,
    ignore=("rotary_emb.sliding_attention_inv_freq", "rotary_emb.full_attention_inv_freq", "inv_freq"),
    handles=GEMMA2_KEYS
    + ("rope_local_base_freq", "use_bidirectional_attention", "sliding_window_pattern", "_sliding_window_pattern"),
    tiny={
        # a local layer (window 4, base 10 000) and a global one (base 1e6, linear scaling by 8)
        "gemma3": (
            "Gemma3ForCausalLM",
            dict(
                TINY_SHAPE,
                num_key_value_heads=2,
                head_dim=8,
                query_pre_attn_scalar=16,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention"],
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                },
                attn_implementation="eager",
            ),
        ),
    },
)
