"""Hook names: TransformerLens's short names (``get_act_name``) and helpful errors for unknown names.

The lowest layer of lens (no lens imports): hooks, caches and tools all spell and check names here.

>>> get_act_name("pattern", 3)
'blocks.3.attn.hook_pattern'
>>> get_act_name("scale", 2, "ln1")
'blocks.2.ln1.hook_scale'
>>> get_act_name("scale4ln1"), get_act_name("attn3"), get_act_name("k6")   # TransformerLens's shorthand
('blocks.4.ln1.hook_scale', 'blocks.3.attn.hook_pattern', 'blocks.6.attn.hook_k')
>>> unknown_hook_error("blocks.0.hook_resid_pr", ["blocks.0.hook_resid_pre"])
ValueError("unknown hook name 'blocks.0.hook_resid_pr'. Closest valid names: ['blocks.0.hook_resid_pre']")
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

# Short names -> (sub-module, full hook name) as TransformerLens's get_act_name spells them.
_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
# q_input / k_input / v_input / attn_in / mlp_in are block-level hooks (blocks.{i}.hook_q_input), as in TransformerLens.
_ATTN_ACTS = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_MLP_ACTS = {"pre", "pre_linear", "mid", "post"}
_TOP_LEVEL = {"embed", "pos_embed", "tokens"}
# "<name><layer>[<layer_type>]": TransformerLens's shorthand ("k6", "pre5", "scale4ln1"); lens also allows
# underscores in the name ("resid_pre5", which TransformerLens leaves unparsed).
_SHORTHAND = re.compile(r"([a-z][a-z_]*?)(\d+)(.*)")


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name for a TransformerLens short name (``"pattern"``, ``"resid_pre"``, ...).

    Names that already contain a dot or start with ``hook_`` are returned as given.
    ``layer_type`` disambiguates ``"scale"``/``"normalized"`` (``"ln1"``, ``"ln2"``, ``"ln_final"``;
    default ``"ln1"``). Without ``layer``, a name ending in digits carries the layer and, after them,
    the layer type, as in TransformerLens: ``"k6"``, ``"pattern3"``, ``"scale4ln1"``, ``"normalized2ln2"``.
    Aliases: ``attn`` = pattern, ``attn_logits`` = attn_scores, ``key``/``query``/``value``,
    ``mlp_pre``/``mlp_mid``/``mlp_post``; layer types ``a``/``attention`` = attn, ``m`` = mlp,
    ``b``/``block``/``blocks`` = the block itself.
    """
    if not isinstance(name, str):
        raise TypeError(f"activation name must be a str, got {type(name).__name__}")
    if ("." in name or name.startswith("hook_")) and layer is None:
        return name
    if layer is None and layer_type is None:
        match = _SHORTHAND.fullmatch(name)
        if match is not None:
            name, digits, rest = match.groups()
            layer, layer_type = int(digits), rest or None
    name = _ALIASES.get(name, name)
    if layer_type is not None:
        layer_type = _LAYER_TYPE_ALIASES.get(layer_type, layer_type)
    if name in _TOP_LEVEL:
        return f"hook_{name}"
    if name in ("scale", "normalized"):
        if layer is None or layer_type in ("ln_final", "final"):
            return f"ln_final.hook_{name}"
        return f"blocks.{layer}.{layer_type or 'ln1'}.hook_{name}"
    if layer is None:
        raise ValueError(f"activation {name!r} needs a layer index")
    if name in _ATTN_ACTS:
        return f"blocks.{layer}.attn.hook_{name}"
    if name in _MLP_ACTS:
        return f"blocks.{layer}.mlp.hook_{name}"
    if layer_type:
        return f"blocks.{layer}.{layer_type}.hook_{name}"
    return f"blocks.{layer}.hook_{name}"


def closest_names(name: str, valid: Iterable[str], n: int = 5) -> list[str]:
    """Valid names closest to ``name`` (for error messages)."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.4)
    if not close:
        tail = name.split(".")[-1]
        close = [v for v in valid if v.endswith(tail)][:n]
    return close


def unknown_hook_error(name: str, valid: Iterable[str]) -> ValueError:
    close = closest_names(name, valid)
    hint = f" Closest valid names: {close}" if close else ""
    return ValueError(f"unknown hook name {name!r}.{hint}")
