"""``HookedTransformerConfig``: TransformerLens's config constructor, building a :class:`TransformerConfig`.

A notebook that builds its model from a config (``HookedTransformerConfig(n_layers=2, d_model=128, d_head=32,
act_fn="relu", normalization_type="LN", ...)``) runs on lens after its import changes: the TransformerLens
field names and defaults are translated into lens's (``normalization_type`` -> ``normalization``,
``positional_embedding_type="standard"`` -> ``positional="learned"``, ``n_heads=-1`` -> ``d_model // d_head``,
``attn_scale`` divides in TransformerLens and multiplies in lens, TransformerLens's always-present ``b_U``
-> ``unembed_bias=True``, a gated MLP without biases since TransformerLens adds its ``b_in`` after the gate
product, which lens's MLP does not express, ...). A field with no lens equivalent raises
:class:`ConfigUntranslatable` (a ``ValueError``) naming it, unless it holds the value that means "off";
fields that only steer TransformerLens's random init (``seed``, ``init_mode``, ...) are dropped.

``isinstance(cfg, HookedTransformerConfig)`` is true for every ``TransformerConfig``.

>>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, d_head=8, n_ctx=8, d_vocab=50, act_fn="relu")
>>> cfg.n_heads, cfg.positional, cfg.unembed_bias
(2, 'learned', True)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lens.config import TransformerConfig

__all__ = ["ConfigUntranslatable", "HookedTransformerConfig", "translate_config"]


class ConfigUntranslatable(ValueError):
    """A ``HookedTransformerConfig`` field or value that lens's ``TransformerConfig`` cannot express."""


# TransformerLens 2.x fields lens has no equivalent for, with the value that means "off" (any other raises);
# fields lens has under the same name (use_qk_norm, the soft caps, ...) pass through before this table is read.
TL_OFF: dict[str, Any] = {
    "use_local_attn": False,
    "original_architecture": None,
    "from_checkpoint": False,
    "checkpoint_index": None,
    "checkpoint_label_type": None,
    "checkpoint_value": None,
    "n_devices": 1,
    "attention_dir": "causal",
    "scale_attn_by_inverse_layer_idx": False,
    "final_rms": False,
    "n_params": None,
    "tokenizer_prepends_bos": None,
    "post_embedding_ln": False,
    "trust_remote_code": False,
    "load_in_4bit": False,
    "relative_attention_max_distance": None,
    "relative_attention_num_buckets": None,
    "decoder_start_token_id": None,
    "use_NTK_by_parts_rope": False,
    "attn_types": None,
}
# Fields that only steer TransformerLens's random init or bookkeeping: dropped whatever their value.
TL_IGNORED = (
    "seed",
    "init_mode",
    "initializer_range",
    "init_weights",
    "NTK_by_parts_low_freq_factor",
    "NTK_by_parts_high_freq_factor",
    "NTK_by_parts_factor",
    "NTK_original_ctx_len",
)
NORMS = {"LN": "LN", "RMS": "RMS", None: None}
POSITIONS = {"standard": "learned", "rotary": "rotary"}


def translate_config(tl: dict[str, Any]) -> dict[str, Any]:
    """``HookedTransformerConfig`` keyword arguments -> ``TransformerConfig`` keyword arguments.

    >>> translate_config({"n_layers": 1, "d_model": 8, "n_ctx": 4, "d_head": 2, "d_vocab": 10,
    ...                   "normalization_type": "RMS", "positional_embedding_type": "rotary",
    ...                   "attn_only": True})["positional"]
    'rotary'
    """
    lens_fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    tl = dict(tl)
    for name in ("n_layers", "d_model", "n_ctx", "d_head"):
        if name not in tl:
            raise ConfigUntranslatable(f"HookedTransformerConfig needs {name}= (TransformerLens requires it too)")
    out: dict[str, Any] = {}
    if tl.get("n_heads", -1) == -1:
        if tl["d_model"] % tl["d_head"]:
            raise ConfigUntranslatable(
                f"n_heads=-1 takes d_model // d_head, but d_model={tl['d_model']} is not a multiple of "
                f"d_head={tl['d_head']}"
            )
        tl["n_heads"] = tl["d_model"] // tl["d_head"]
    if tl.get("d_vocab", -1) == -1:
        raise ConfigUntranslatable(
            "d_vocab=-1 (TransformerLens takes it from the tokenizer); give d_vocab= (e.g. len(tokenizer))"
        )
    if tl.get("d_vocab_out", -1) in (-1, tl["d_vocab"]):
        tl.pop("d_vocab_out", None)
    if not tl.get("attn_only", False) and tl.get("act_fn") is None:
        raise ConfigUntranslatable("act_fn must be given for a model with MLPs (attn_only=False), as TransformerLens")
    if tl.get("act_fn", "x") is None:
        tl.pop("act_fn")
    if "normalization_type" in tl:
        norm = tl.pop("normalization_type")
        if norm not in NORMS:
            raise ConfigUntranslatable(
                f"normalization_type={norm!r} has no lens equivalent (supported: {sorted(NORMS, key=str)}); "
                "for a folded model use 'LN'/'RMS' and process_weights(fold_ln=True)"
            )
        out["normalization"] = NORMS[norm]
    if "positional_embedding_type" in tl:
        pos = tl.pop("positional_embedding_type")
        if pos not in POSITIONS:
            raise ConfigUntranslatable(
                f"positional_embedding_type={pos!r} has no lens equivalent (supported: {sorted(POSITIONS)})"
            )
        out["positional"] = POSITIONS[pos]
    use_scale, scale = tl.pop("use_attn_scale", True), tl.pop("attn_scale", -1.0)
    if not use_scale:
        out["attn_scale"] = 1.0
    elif scale != -1.0:
        out["attn_scale"] = 1.0 / scale  # TransformerLens divides the scores by attn_scale, lens multiplies
    if tl.get("use_local_attn") and tl.get("attn_types") is not None:
        out["window_layers"] = tuple(i for i, t in enumerate(tl.pop("attn_types")) if t == "local")
        tl.pop("use_local_attn")
    if tl.get("use_NTK_by_parts_rope"):
        tl.pop("use_NTK_by_parts_rope")
        out["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": tl.get("NTK_by_parts_factor", 8.0),
            "low_freq_factor": tl.get("NTK_by_parts_low_freq_factor", 1.0),
            "high_freq_factor": tl.get("NTK_by_parts_high_freq_factor", 4.0),
            "original_max_position_embeddings": tl.get("NTK_original_ctx_len", 8192),
        }
    for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):  # TransformerLens: -1.0 means no cap
        if tl.get(cap, -1.0) in (-1.0, None):
            tl.pop(cap, None)
    out.setdefault("unembed_bias", tl.pop("unembed_bias", True))  # TransformerLens's unembed always has b_U
    if tl.get("gated_mlp"):
        # TransformerLens's gated MLP adds b_in after the gate product and has no gate bias; lens's biases sit
        # inside each branch (as Hugging Face's). Both start at zero, so a translated gated MLP has none.
        out.setdefault("mlp_bias", tl.pop("mlp_bias", False))
    for key, value in tl.items():
        if key in lens_fields:
            out[key] = value
        elif key in TL_IGNORED or (key in TL_OFF and value == TL_OFF[key]):
            continue
        elif key in TL_OFF:
            raise ConfigUntranslatable(
                f"HookedTransformerConfig field {key}={value!r} has no lens equivalent (only {TL_OFF[key]!r} does)"
            )
        else:
            raise ConfigUntranslatable(f"unknown HookedTransformerConfig field {key}={value!r}")
    return out


class _ConfigMeta(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, TransformerConfig)


class HookedTransformerConfig(metaclass=_ConfigMeta):
    """TransformerLens's config constructor: ``HookedTransformerConfig(**tl_fields)`` is a ``TransformerConfig``.

    >>> cfg = HookedTransformerConfig(n_layers=2, d_model=64, d_head=16, n_ctx=32, d_vocab=100,
    ...                               act_fn="gelu", normalization_type="RMS")
    >>> type(cfg).__name__, cfg.normalization
    ('TransformerConfig', 'RMS')
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> TransformerConfig:  # type: ignore[misc]
        if args:
            raise TypeError("HookedTransformerConfig takes keyword arguments only (its field names)")
        return TransformerConfig(**translate_config(kwargs))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TransformerConfig:
        """A config from a dict of TransformerLens field names."""
        return cls(**config_dict)

    @classmethod
    def unwrap(cls, config: dict[str, Any] | TransformerConfig) -> TransformerConfig:
        """A config from a dict of TransformerLens field names; a config is returned as it is."""
        if isinstance(config, dict):
            return cls(**config)
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a dict or a TransformerConfig, got {type(config).__name__}")
        return config
