"""Builders for the TransformerLens oracle: one tiny random-weight model, loaded into lens and into TransformerLens.

Both sides start from the same ``transformers`` model (``tests/tiny.py``'s random weights at O(1) scale):
TransformerLens through its own weight-conversion function (``convert_gpt2_weights``, ...) and a
``HookedTransformerConfig`` built here from the HF config (its ``from_pretrained`` needs the hub), lens
through ``lens.loading.from_hf_model``. Weight processing is off on both sides unless asked for, and then
the same flags are applied by each library's own code (TransformerLens's ``load_and_process_state_dict``,
lens's ``process_weights``).

The TransformerLens builders need ``transformer_lens`` (test modules call ``pytest.importorskip`` first);
:func:`lens_model` and the tokenizer builders work without it (lens-only oracles).

>>> tl_model, lens_model = tl_and_lens_gpt2()                  # doctest: +SKIP
>>> tl_model, lens_model = tl_and_lens("llama", fold_ln=True)  # doctest: +SKIP
>>> tokens = tokens_for(lens_model)                            # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import tokenizers
import torch

try:  # optional: the builders of lens models and the tokenizer work without it
    import transformer_lens as tl
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_gpt2_weights,
        convert_llama_weights,
        convert_neox_weights,
    )
except ImportError:  # pragma: no cover - depends on the venv
    tl = None
    convert_gemma_weights = convert_gpt2_weights = convert_llama_weights = convert_neox_weights = None

import lens
from lens.loading import from_hf_model
from lens.tokenizer import Tokenizer
from tests.tiny import build_hf

TL_VERSION: str | None = None if tl is None else __import__("importlib.metadata").metadata.version("transformer_lens")
PROCESSING_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
SHAPE = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=96)

# family -> (HF model class, HF config kwargs): plain shapes TransformerLens 2.x converts offline.
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": (
        "GPT2LMHeadModel",
        dict(n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=64, bos_token_id=95, eos_token_id=95),
    ),
    "llama": ("LlamaForCausalLM", dict(SHAPE, num_key_value_heads=2, max_position_embeddings=64)),
    "neox": ("GPTNeoXForCausalLM", dict(SHAPE, rotary_pct=0.5, max_position_embeddings=64)),
    "gemma": ("GemmaForCausalLM", dict(SHAPE, num_key_value_heads=1, head_dim=16, max_position_embeddings=64)),
}


# A 96-token word-level vocabulary (the tiny models' size); the last id is GPT-2's "<|endoftext|>" (bos = eos = pad),
# as in GPT-2 (TransformerLens 2.18's generate builds its attention mask from zeros, so pad must not be id 0).
WORDS = (
    "the a an and or of to in on at for with from by is was are were be been it its he she "
    "they we you i his her their this that these those when then there here what who which where why how not "
    "no yes John Mary Tom Anna store park school house drink book ball gift went gave got took made said saw "
    "go give take make say see one two three four five cat dog bird red blue green big "
    "small new old good bad , . ! ? <unk> <|endoftext|>"
).split()
assert len(WORDS) == 96 and len(set(WORDS)) == 96, (len(WORDS), len(set(WORDS)))
_TMP = Path(tempfile.mkdtemp(prefix="lens-tl-oracle-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@functools.cache
def tokenizer_dir() -> Path:
    """A saved ``transformers`` fast tokenizer (word level, spaces kept as a "▁" prefix), built offline."""
    from transformers import PreTrainedTokenizerFast

    vocab = {(w if w.startswith("<") else "▁" + w): i for i, w in enumerate(WORDS)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.add_special_tokens(["<|endoftext|>"])
    special = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special)
    directory = _TMP / "tokenizer"
    fast.save_pretrained(directory)
    return directory


def hf_tokenizer():
    """The shared tokenizer as ``transformers`` loads it (what a TransformerLens model is given)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir())


def lens_tokenizer() -> Tokenizer:
    """The same tokenizer as lens loads it from the saved directory."""
    return Tokenizer.from_directory(tokenizer_dir())


def _common(hf, **fields: Any) -> dict[str, Any]:
    return dict(device="cpu", dtype=torch.float32, default_prepend_bos=False, **fields)


def _gpt2_cfg(c) -> dict[str, Any]:
    return _common(
        c, d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
        n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
        act_fn=c.activation_function, normalization_type="LN", original_architecture="GPT2LMHeadModel",
    )  # fmt: skip


def _rope_base(c) -> float:
    params = getattr(c, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(c, "rope_theta", 10000.0)))


def _llama_cfg(c) -> dict[str, Any]:
    d_head = c.hidden_size // c.num_attention_heads
    return _common(
        c, d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn=c.hidden_act, n_key_value_heads=c.num_key_value_heads, normalization_type="RMS",
        positional_embedding_type="rotary", rotary_adjacent_pairs=False, rotary_dim=d_head,
        rotary_base=_rope_base(c), final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM",
    )  # fmt: skip


def _neox_cfg(c) -> dict[str, Any]:
    d_head = c.hidden_size // c.num_attention_heads
    rotary_pct = getattr(c, "rotary_pct", None) or (getattr(c, "rope_parameters", None) or {}).get(
        "partial_rotary_factor", 1.0
    )
    return _common(
        c, d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.layer_norm_eps, d_vocab=c.vocab_size,
        act_fn=c.hidden_act, normalization_type="LN", positional_embedding_type="rotary",
        rotary_adjacent_pairs=False, rotary_dim=round(rotary_pct * d_head), rotary_base=_rope_base(c),
        parallel_attn_mlp=c.use_parallel_residual, original_architecture="GPTNeoXForCausalLM",
    )  # fmt: skip


def _gemma_cfg(c) -> dict[str, Any]:
    return _common(
        c, d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn="gelu_new", n_key_value_heads=c.num_key_value_heads, normalization_type="RMS",
        positional_embedding_type="rotary", rotary_adjacent_pairs=False, rotary_dim=c.head_dim,
        rotary_base=_rope_base(c), final_rms=True, gated_mlp=True, original_architecture="GemmaForCausalLM",
    )  # fmt: skip


_CONVERT = {
    "gpt2": (_gpt2_cfg, convert_gpt2_weights),
    "llama": (_llama_cfg, convert_llama_weights),
    "neox": (_neox_cfg, convert_neox_weights),
    "gemma": (_gemma_cfg, convert_gemma_weights),
}


def tl_config(family: str, hf_model) -> tl.HookedTransformerConfig:  # noqa: F821 - tl may be None
    """The ``HookedTransformerConfig`` TransformerLens would use for ``hf_model`` (a tiny ``family`` model)."""
    return tl.HookedTransformerConfig(**_CONVERT[family][0](hf_model.config))


def tl_from_hf(family: str, hf_model, **processing: bool) -> tl.HookedTransformer:  # noqa: F821
    """``hf_model`` converted by TransformerLens's own code; processing flags default to off."""
    cfg = tl_config(family, hf_model)
    model = tl.HookedTransformer(cfg, tokenizer=hf_tokenizer(), move_to_device=False)
    flags = {name: processing.pop(name, False) for name in PROCESSING_FLAGS}
    flags["refactor_factored_attn_matrices"] = processing.pop("refactor_factored_attn_matrices", False)
    if processing:
        raise TypeError(f"unknown processing flags {sorted(processing)}")
    with torch.no_grad():
        state_dict = {k: v.detach().clone() for k, v in _CONVERT[family][1](hf_model, cfg).items()}
    model.load_and_process_state_dict(state_dict, **flags)
    return model.eval()


def lens_from_hf(hf_model, **processing: bool) -> lens.HookedTransformer:
    """``hf_model`` converted by lens; the same processing flags applied by lens's own code."""
    model = from_hf_model(hf_model, model_class=lens.HookedTransformer, tokenizer=lens_tokenizer()).eval()
    if any(processing.values()):
        model.process_weights(**processing)
    return model


def hf_for(family: str, seed: int = 0, **hf_overrides: Any):
    """The tiny random-weight ``transformers`` model both sides load (``hf_overrides``: HF config kwargs)."""
    cls, kwargs = FAMILIES[family]
    return build_hf((cls, {**kwargs, **hf_overrides}), seed)


def tl_and_lens(
    family: str = "gpt2", seed: int = 0, processing: dict[str, bool] | None = None, **hf_overrides: Any
) -> tuple[tl.HookedTransformer, lens.HookedTransformer]:
    """(TransformerLens model, lens model) with the same weights and tokenizer; ``family`` in :data:`FAMILIES`.

    ``processing``: the same flags for both (``fold_ln``, ``center_writing_weights``, ``center_unembed``,
    ``fold_value_biases``); off by default. ``hf_overrides``: HF config kwargs (``n_layer=3``, ...).
    """
    hf = hf_for(family, seed, **hf_overrides)
    processing = dict(processing or {})
    return tl_from_hf(family, hf, **processing), lens_from_hf(hf, **processing)


def tl_and_lens_gpt2(seed: int = 0, processing: dict[str, bool] | None = None, **hf_overrides: Any):
    """(TransformerLens model, lens model): a tiny GPT-2 (2 layers, d_model 32, 4 heads, vocab 96, n_ctx 64)."""
    return tl_and_lens("gpt2", seed, processing, **hf_overrides)


def tokens_for(model, batch: int = 2, pos: int = 12, seed: int = 1) -> torch.Tensor:
    """Random token ids in the model's vocabulary (lens or TransformerLens model)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=gen)


def lens_model(family: str = "gpt2", seed: int = 0, **processing: bool) -> lens.HookedTransformer:
    """The lens side alone (no TransformerLens needed): the same weights and tokenizer as :func:`tl_and_lens`."""
    return lens_from_hf(hf_for(family, seed), **processing)
