"""The family contract: how one Hugging Face family maps onto lens, and its tiny test model.

An :class:`Adapter` is data plus two small functions: ``config(hf: dict) -> dict`` of
:class:`~lens.config.TransformerConfig` fields, and ``weights(cfg) -> {lens_name: WeightSpec}``, where a
:class:`WeightSpec` names the Hugging Face tensors it reads and how to combine them (copy, transpose,
concatenate). ``tiny`` declares the family's tiny random-weight test models, so the parity tests cover a
new family without edits. Shared code (:mod:`lens.loading`) applies any adapter; nothing outside a family
file knows a family's name. This layer depends on :mod:`lens.config` only.

>>> spec = cat("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight")
>>> spec.sources
('model.layers.0.self_attn.q_proj.weight', 'model.layers.0.self_attn.k_proj.weight')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lens.config import DEFAULT_MAX_CONTEXT, TransformerConfig

# Tiny test models (see ``Adapter.tiny``): 2 layers, d_model 32, a 96-token vocabulary. Most families
# spell the shape with these ``transformers`` config names; GPT-2 spells it n_layer / n_embd / n_head.
TINY_VOCAB = 96
TINY_SHAPE: dict[str, Any] = dict(
    num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=TINY_VOCAB
)


# Keys of every ``transformers`` config (either major version) that do not change what the forward pass
# computes: metadata, token ids, generation defaults, output switches, and training-only settings (dropout,
# initialisation, auxiliary losses). Any other key of a checkpoint's config must be declared by its adapter.
GENERIC_KEYS = frozenset(
    {
        # metadata and bookkeeping
        "_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
        "use_bfloat16", "_commit_hash", "_attn_implementation_autoset", "attn_implementation", "auto_map",
        "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "id2label", "label2id",
        "problem_type", "torchscript", "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward",
        "is_encoder_decoder", "is_decoder", "tie_encoder_decoder", "cross_attention_hidden_size",
        "return_dict", "output_hidden_states", "output_attentions", "output_scores", "return_dict_in_generate",
        "use_cache", "cache_implementation", "transformers.js_config", "quantization_config_ignored",
        # token ids and generation defaults (lens's generate takes its own arguments)
        "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
        "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
        "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
        "num_return_sequences", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
        "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
        # training only
        "initializer_range", "init_std", "attention_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop",
        "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
        "embed_dropout", "resid_dropout", "dropout", "activation_dropout", "layerdrop", "summary_type",
        "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
        "router_aux_loss_coef", "output_router_logits", "router_z_loss_coef", "gradient_checkpointing",
    }
)  # fmt: skip


# Keys of every config that name a feature lens does not implement, accepted only at their "off" value
GENERIC_DEFAULTS: dict[str, Any] = {"add_cross_attention": False}


@dataclass(frozen=True)
class WeightSpec:
    """One lens parameter built from one or more Hugging Face tensors."""

    sources: tuple[str, ...]
    combine: Callable[[list[Tensor]], Tensor]
    describe: str = "copy"
    # the parameter dimension the (single) source's rows land on, one to one, when ``combine`` works row by row
    # (copy, add 1: 0; transpose: 1): the loader may then copy a large tensor a few rows at a time
    rows_to: int | None = None


def same(name: str) -> WeightSpec:
    return WeightSpec((name,), lambda ts: ts[0], "copy", rows_to=0)


def transpose(name: str) -> WeightSpec:
    """A ``Conv1D``-style ``[in, out]`` weight stored as ``[out, in]``."""
    return WeightSpec((name,), lambda ts: ts[0].T, "transpose", rows_to=1)


def cat(*names: str) -> WeightSpec:
    """Concatenate along the output dimension (e.g. separate q/k/v projections into one)."""
    return WeightSpec(tuple(names), lambda ts: torch.cat(ts, dim=0), "concatenate")


def plus_one(name: str) -> WeightSpec:
    """A norm weight stored as an offset from 1 (Gemma's ``(1 + w)`` RMSNorm)."""
    return WeightSpec((name,), lambda ts: ts[0] + 1.0, "add 1", rows_to=0)


@dataclass(frozen=True)
class Adapter:
    """A declarative mapping from one Hugging Face architecture family to lens."""

    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    config: Callable[[dict[str, Any]], dict[str, Any]]
    weights: Callable[[TransformerConfig], dict[str, WeightSpec]]
    ignore: tuple[str, ...] = field(default=())  # checkpoint tensor-name suffixes that carry no weights
    tied_unembed: tuple[str, ...] = ("lm_head.weight",)  # present but unused when embeddings are tied
    # (regex, replacement) pairs giving a checkpoint tensor the name ``weights`` uses, for families whose
    # files and in-memory ``transformers`` modules spell a tensor differently (NeoX's embed_out/lm_head)
    renames: tuple[tuple[str, str], ...] = field(default=())
    # for families whose in-memory ``transformers`` modules fuse tensors the files keep apart (Mixtral's
    # experts: one [experts, 2 * d_mlp, d_model] ``gate_up_proj`` in memory, ``experts.{e}.w1``/``w3`` on disk):
    # ``unpack(name, cfg)`` gives ``{name weights() uses: slice of that tensor}`` for such a (renamed) tensor
    # and ``{}`` for any other
    unpack: Callable[[str, TransformerConfig], dict[str, Callable[[Tensor], Tensor]]] | None = field(default=None)
    # checkpoint tensor-name prefixes (as stored, before ``renames``) of modules lens does not build, whose
    # tensors are not read at all: a multimodal checkpoint's vision tower and projector when lens loads its
    # language model only. Every other tensor must still be used or ignored (``load_weights`` raises otherwise)
    skip_prefixes: tuple[str, ...] = field(default=())
    # The Hugging Face config keys the adapter reads (``config`` may read only these), those of the family it
    # may safely ignore (derived from others, or without effect in inference), and those lens does not
    # implement, accepted only at the value that switches the feature off (None is accepted too). Any
    # other key (beyond GENERIC_KEYS) raises before any weight is read: see ``check_keys``.
    handles: tuple[str, ...] = field(default=())
    ignores: tuple[str, ...] = field(default=())
    defaults: dict[str, Any] = field(default_factory=dict, hash=False)
    # tiny test models: {variant name: (transformers model class name, config kwargs)}; the first is the
    # family's default. Tests build, save and compare every variant against ``transformers``.
    tiny: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for variant, spec in self.tiny.items():
            if not (
                isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict)
            ):
                raise TypeError(
                    f"{self.name} adapter: tiny[{variant!r}] must be (transformers model class name, config kwargs), "
                    f"got {spec!r}"
                )

    def ignored(self, cfg: TransformerConfig) -> tuple[str, ...]:
        """Checkpoint tensor-name suffixes to skip for ``cfg``."""
        return self.ignore + (self.tied_unembed if cfg.tie_word_embeddings else ())

    def source_names(self, names: Iterable[str]) -> dict[str, str]:
        """``{name as weights() spells it: name in the checkpoint}`` after applying ``renames``; names under
        ``skip_prefixes`` are left out.

        >>> ad = Adapter("x", (), (), dict, dict, renames=(("^lm_head[.]", "embed_out."),), skip_prefixes=("vis.",))
        >>> ad.source_names(["lm_head.weight", "vis.proj.weight"])
        {'embed_out.weight': 'lm_head.weight'}
        """
        out = {}
        for name in names:
            if self.skip_prefixes and name.startswith(self.skip_prefixes):
                continue
            canonical = name
            for pattern, replacement in self.renames:
                canonical = re.sub(pattern, replacement, canonical)
            out[canonical] = name
        return out

    def check_keys(self, hf: dict[str, Any]) -> None:
        """Raise ``ValueError`` for config keys this adapter does not declare, or a declared-off feature on.

        >>> ad = Adapter("x", (), (), dict, dict, handles=("hidden_size",), defaults={"use_mrope": False})
        >>> ad.check_keys({"hidden_size": 8, "use_cache": True, "use_mrope": False})
        >>> ad.check_keys({"hidden_size": 8, "use_mrope": True})
        Traceback (most recent call last):
        ...
        ValueError: the x config has use_mrope=True, a feature lens does not implement (it loads only use_mrope=False)
        """
        defaults = {**GENERIC_DEFAULTS, **self.defaults}
        known = GENERIC_KEYS.union(self.handles, self.ignores, defaults)
        unknown = sorted(k for k in hf if k not in known)
        if unknown:
            shown = ", ".join(f"{k}={hf[k]!r}" for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ValueError(
                f"the {self.name} config has key(s) lens does not know: {shown}; they may describe a feature lens "
                f"does not implement, so it refuses to load rather than compute different numbers (if a key is "
                f"harmless, declare it in the {self.name} adapter's ignores)"
            )
        for key, off in defaults.items():
            value = hf.get(key)
            if value is not None and value != off:
                raise ValueError(
                    f"the {self.name} config has {key}={value!r}, a feature lens does not implement "
                    f"(it loads only {key}={off!r})"
                )

    def make_config(self, hf: dict[str, Any], **overrides: Any) -> TransformerConfig:
        self.check_keys(hf)
        fields = self.config(hf)
        fields.setdefault("model_name", hf.get("_name_or_path") or self.name)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return TransformerConfig(**fields)


def rope_settings(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rotary base, scaling dict or None) from either transformers-4 or -5 style configs."""
    params = hf.get("rope_parameters") or {}
    base = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind in (None, "default"):
        return float(base), None
    return float(base), with_rope_context({k: v for k, v in scaling.items() if k != "rope_theta"}, hf)


# scalings that read the context lengths (lens.components.rotary): which of them each needs
_CONTEXT_KEYS = {
    "llama3": ("original_max_position_embeddings",),
    "yarn": ("original_max_position_embeddings", "max_position_embeddings"),
    "longrope": ("original_max_position_embeddings", "max_position_embeddings"),
    "dynamic": ("max_position_embeddings",),
}


def with_rope_context(scaling: dict[str, Any], hf: dict[str, Any]) -> dict[str, Any]:
    """``scaling`` plus the context lengths its type reads, from the top level of the HF config: lens's
    rotary sees only ``cfg.rope_scaling``. ``original_max_position_embeddings`` defaults to
    ``max_position_embeddings`` as ``transformers`` standardises it (llama3 / yarn / longrope)."""
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    keys = _CONTEXT_KEYS.get(kind, ())
    out = dict(scaling)
    if "max_position_embeddings" in keys and hf.get("max_position_embeddings") is not None:
        out.setdefault("max_position_embeddings", hf["max_position_embeddings"])
    if "original_max_position_embeddings" in keys and hf.get("max_position_embeddings") is not None:
        out.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
    return out


def trained_context(hf: dict[str, Any], scaling: dict[str, Any] | None, default: int = 2048) -> int:
    """The context the weights are meant for: ``max_position_embeddings``, times ``factor`` under dynamic NTK
    (whose ``max_position_embeddings`` is the pre-training length it extrapolates beyond)."""
    trained = int(hf.get("max_position_embeddings") or default)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "dynamic" and scaling.get("factor"):
        trained = int(trained * float(scaling["factor"]))
    return trained


LAYER_KINDS = ("full_attention", "sliding_attention")  # the values of ``layer_types`` lens implements


def sliding_layers(hf: dict[str, Any], n_layers: int) -> tuple[int, ...] | None:
    """The layers ``layer_types`` marks ``"sliding_attention"`` (None when the config has no ``layer_types``).

    Any other kind (e.g. ``"chunked_attention"``) or a list of the wrong length raises ``ValueError``: a layer of
    a kind lens does not implement must not silently become a global one.

    >>> sliding_layers({"layer_types": ["sliding_attention", "full_attention"]}, 2)
    (0,)
    """
    kinds = hf.get("layer_types")
    if not kinds:
        return None
    unknown = sorted(set(kinds) - set(LAYER_KINDS))
    if unknown:
        raise ValueError(f"layer_types has attention kind(s) {unknown}; lens implements {list(LAYER_KINDS)}")
    if len(kinds) != n_layers:
        raise ValueError(f"layer_types lists {len(kinds)} layers, but num_hidden_layers={n_layers}")
    return tuple(i for i, kind in enumerate(kinds) if kind == "sliding_attention")


def partial_rotary_dim(hf: dict[str, Any], d_head: int, default: float = 1.0) -> int:
    """``int(d_head * partial_rotary_factor)``, the factor read from ``rope_parameters`` (transformers 5)
    or the top level (transformers 4), as ``transformers`` computes the rotated features."""
    params = hf.get("rope_parameters") or {}
    return int(d_head * params.get("partial_rotary_factor", hf.get("partial_rotary_factor", default)))


def context_fields(trained: int) -> dict[str, int]:
    """Long-context models load with ``DEFAULT_MAX_CONTEXT``; ``context_size_override`` raises it."""
    return {"n_ctx_trained": trained, "n_ctx": min(trained, DEFAULT_MAX_CONTEXT)}


def per_layer(cfg: TransformerConfig, template: dict[str, WeightSpec | Callable[[int], WeightSpec]]) -> dict:
    """Expand ``{"blocks.{i}.x": fn(i)}`` for every layer."""
    out = {}
    for i in range(cfg.n_layers):
        for lens_name, make in template.items():
            out[lens_name.format(i=i)] = make(i)
    return out


def qk_norm_weights(cfg: TransformerConfig, make: Callable[[str], WeightSpec] = same) -> dict[str, WeightSpec]:
    """``attn.q_norm`` / ``attn.k_norm`` weights from ``model.layers.{i}.self_attn.{q,k}_norm.weight`` (the
    Qwen3, Gemma 3 and OLMo-2 files); ``make``: how each is read (``plus_one`` for Gemma's ``1 + w``)."""
    a = "model.layers.{i}.self_attn."
    return per_layer(
        cfg,
        {
            "blocks.{i}.attn.q_norm.w": lambda i: make(a.format(i=i) + "q_norm.weight"),
            "blocks.{i}.attn.k_norm.w": lambda i: make(a.format(i=i) + "k_norm.weight"),
        },
    )
