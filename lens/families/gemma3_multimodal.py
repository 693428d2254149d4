"""Gemma 3 multimodal (``Gemma3ForConditionalGeneration``): its language model, loaded as a text-only Gemma 3.

The 4B, 12B and 27B Gemma 3 checkpoints (google/gemma-3-4b-pt / -it, gemma-3-12b-*, gemma-3-27b-*; the sizes
with linear rope scaling by 8 on the global layers) are multimodal: a SigLIP vision tower and a projector
feed image embeddings into a Gemma 3 language model. lens loads **the language model only** and takes
token ids only: the vision tower and projector are not loaded (``skip_prefixes``) and image inputs are not
supported. On text, logits equal ``transformers``' ``Gemma3ForConditionalGeneration`` (whose mask without
``token_type_ids`` is the text model's causal / sliding-window mask); the image placeholder tokens
(``image_token_index``, ``boi_token_index``, ...) are ordinary embedding rows here.

- Config: the ``text_config`` sub-dict is read by the Gemma 3 text adapter (``lens.families.gemma3``), whose
  key declarations it must pass too (``check_keys``). Released ``config.json`` files spell only the keys that
  differ from ``Gemma3TextConfig``'s defaults (gemma-3-4b: hidden size, layers, MLP width, window, rope
  scaling), so the missing ones are filled with those defaults (``TEXT_DEFAULTS``) first. Tied embeddings
  follow the top-level ``tie_word_embeddings`` (default True), as ``transformers`` ties them.
- Weights: released and ``transformers``-5-saved files name the language model ``language_model.model.*``
  (an untied head ``language_model.lm_head.weight``), ``transformers`` 5 modules in memory
  ``model.language_model.*`` (head ``lm_head.weight``); both are renamed to the text model's ``model.*``.
  ``vision_tower.*`` and ``multi_modal_projector.*`` (with or without the leading ``model.``) are skipped.
- ``final_logit_softcapping`` is refused: ``transformers`` 5's ``Gemma3ForConditionalGeneration`` does not cap
  its logits while ``Gemma3ForCausalLM`` (and older multimodal versions) did, so the numbers would depend on
  the version (no released Gemma 3 sets it).

>>> cfg = ADAPTER.config({"text_config": {"hidden_size": 2560, "intermediate_size": 10240,
...                                       "num_hidden_layers": 34, "sliding_window": 1024,
...                                       "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}})
>>> cfg["n_heads"], cfg["d_head"], cfg["d_vocab"], cfg["window_layers"][:6], cfg["rope_scaling"]
(8, 256, 262208, (0, 1, 2, 3, 4, 6), {'factor': 8.0, 'rope_type': 'linear'})
"""

from __future__ import annotations

from typing import Any

from lens.families import gemma3
from lens.families.base import TINY_VOCAB, Adapter

TEXT = gemma3.ADAPTER

# ``transformers``' ``Gemma3TextConfig`` defaults for the keys the Gemma 3 text adapter reads (rope bases and
# the every-sixth-layer-global pattern are that adapter's own defaults); released configs rely on them
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
}


def text_config(hf: dict) -> dict:
    """The language model's config dict: ``text_config`` over ``TEXT_DEFAULTS``."""
    text = hf.get("text_config") or {}
    if not isinstance(text, dict):
        raise ValueError(f"the Gemma 3 config's text_config must be a JSON object, got {type(text).__name__}")
    return {**TEXT_DEFAULTS, **text}


def _config(hf: dict) -> dict:
    text = text_config(hf)
    TEXT.check_keys(text)
    if text.get("final_logit_softcapping") is not None:
        raise ValueError(
            f"text_config has final_logit_softcapping={text['final_logit_softcapping']!r}: transformers' "
            "Gemma3ForConditionalGeneration does not cap its logits in every version, so lens refuses it"
        )
    fields = TEXT.config(text)
    fields["tie_word_embeddings"] = bool(hf.get("tie_word_embeddings", True))
    return fields


_TEXT_TINY = {k: v for k, v in TEXT.tiny["gemma3"][1].items() if k != "attn_implementation"}
_SIGLIP_TINY = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    vision_use_head=False,  # as in the released checkpoints
)

ADAPTER = Adapter(
    name="gemma3_multimodal",
    architectures=("Gemma3ForConditionalGeneration",),
    model_types=("gemma3",),
    config=_config,
    weights=TEXT.weights,
    ignore=TEXT.ignore,
    renames=(
        (r"^language_model\.model\.", "model."),  # released / saved files
        (r"^language_model\.lm_head\.", "lm_head."),
        (r"^model\.language_model\.", "model."),  # transformers 5 modules in memory
    ),
    skip_prefixes=("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."),
    handles=("text_config", "tie_word_embeddings"),
    # the vision tower's config and the image placeholder tokens: lens loads the language model only
    ignores=(
        "vision_config",
        "mm_tokens_per_image",
        "boi_token_index",
        "eoi_token_index",
        "image_token_index",
        "image_token_id",
        "boi_token_id",
        "eoi_token_id",
    ),
    tiny={
        # the Gemma 3 text tiny model (a local layer, a global one with linear rope scaling by 8) inside a
        # tiny SigLIP model: 28 / 14 = 2 x 2 patches, pooled to 4 tokens per image; image tokens in the vocabulary
        "gemma3-multimodal": (
            "Gemma3ForConditionalGeneration",
            dict(
                text_config=_TEXT_TINY,
                vision_config=_SIGLIP_TINY,
                mm_tokens_per_image=4,
                boi_token_index=TINY_VOCAB - 3,
                eoi_token_index=TINY_VOCAB - 2,
                image_token_index=TINY_VOCAB - 1,
                attn_implementation="eager",
            ),
        ),
    },
)
