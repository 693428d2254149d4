"""TransformerLens 2.x model methods that notebooks call, with TransformerLens's defaults and semantics.

lens's own API says the same things more directly (``from_pretrained`` is unprocessed by default,
``process_weights`` takes explicit flags); these methods exist so that a TransformerLens notebook runs
unchanged after its imports are changed:

- ``HookedTransformer.from_pretrained_no_processing(source, **kw)``: ``from_pretrained`` with every
  processing flag off (lens's default already).
- ``model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True,
  refactor_factored_attn_matrices=False)``: in place, TransformerLens's defaults (value biases folded
  too); steps the architecture cannot honour are skipped with a warning as TransformerLens does
  (``center_writing_weights`` without LayerNorm, ``fold_ln`` without norms), where lens's
  ``process_weights`` raises.
- ``model.load_and_process_state_dict(state_dict, ...)``: load a lens-format state dict (missing keys
  filled from the model, as ``fill_missing_keys``), then ``process_weights_``'s processing.
- ``model.fold_layer_norm(state_dict)``, ``center_writing_weights(state_dict)``, ``center_unembed(state_dict)``,
  ``fold_value_biases(state_dict)``, ``refactor_factored_attn_matrices(state_dict)``: TransformerLens's
  state-dict steps, on lens-format state dicts: the step applied to a scratch copy of the model holding
  ``state_dict`` (the model itself is unchanged), the processed state dict returned.
- ``model.get_pos_offset(past_kv_cache, batch_size)`` and ``model.get_residual(embed, pos_offset, ...)``:
  TransformerLens's first forward steps (the cache's offset; the embedding plus ``hook_pos_embed``).
- ``model.fill_missing_keys(state_dict)``, ``model.to_single_str_token(i)``,
  ``model.all_composition_scores(mode)``, ``model.mps()``, ``model.move_model_modules_to_device()``.

>>> model.process_weights_()                                   # doctest: +SKIP
>>> model.all_composition_scores("K").shape                    # [layer, head, layer, head]  # doctest: +SKIP
torch.Size([2, 8, 2, 8])
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lens.processing import ProcessingFlags, process_weights, untie_embeddings
from lens.utils import composition_scores, get_offset_position_ids

__all__ = ["TransformerLensMethodsMixin", "fill_missing_keys"]

COMPOSITION_MODES = ("Q", "K", "V")
# Parameters a processing step may create (as zeros) and the config flag that records each one.
_OPTIONAL_BIAS_FLAGS = {
    "qkv_bias": "qkv_bias",
    "o_bias": "attn_out_bias",
    "in_bias": "mlp_bias",
    "gate_bias": "mlp_bias",
    "out_bias": "mlp_bias",
    "bias": "unembed_bias",
}


def _adopt_structure(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Give ``model`` the optional biases and the untied unembedding a processed ``state_dict`` holds.

    So that the state-dict steps chain as TransformerLens's do (``center_unembed(fold_layer_norm(sd))``)
    although folding creates biases the unprocessed model lacks. A key with no place in the model raises.
    """
    emb, unemb = state_dict.get("embed.weight"), state_dict.get("unembed.weight")
    if model.cfg.tie_word_embeddings and emb is not None and unemb is not None and not torch.equal(emb, unemb):
        untie_embeddings(model)
    for key in sorted(set(state_dict) - set(model.state_dict())):
        path, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
        flag = _OPTIONAL_BIAS_FLAGS.get(attr)
        if module is None or flag is None or not hasattr(module, attr) or getattr(module, attr) is not None:
            raise ValueError(f"state_dict has the key {key!r}, which this model has no place for")
        value = state_dict[key]
        setattr(module, attr, nn.Parameter(torch.zeros(value.shape, dtype=value.dtype, device=value.device)))
        setattr(model.cfg, flag, True)


def fill_missing_keys(model: torch.nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` with every key of ``model.state_dict()`` it lacks taken from the model (in place).

    As TransformerLens: a missing weight matrix is reported with a warning (a missing bias is not),
    and the dict is completed and returned, so that a partial checkpoint loads with ``strict`` loading.

    >>> sd = fill_missing_keys(model, {"embed.weight": model.embed.weight})   # doctest: +SKIP
    >>> set(sd) == set(model.state_dict())                                   # doctest: +SKIP
    True
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    default = model.state_dict()
    for key in sorted(set(default) - set(state_dict)):
        if "weight" in key.rsplit(".", 1)[-1]:
            warnings.warn(
                f"missing key for a weight matrix in the state dict, filled in from the model: {key}", stacklevel=2
            )
        state_dict[key] = default[key]
    return state_dict


class TransformerLensMethodsMixin:
    """TransformerLens-named methods of ``HookedTransformer`` (see the module docstring)."""

    @classmethod
    def from_pretrained_no_processing(cls, source: Any, **kwargs: Any):
        """``from_pretrained(source, **kwargs)`` with every processing flag defaulting to False.

        lens's ``from_pretrained`` already loads weights unprocessed; flags passed here still apply.

        >>> model = HookedTransformer.from_pretrained_no_processing(Path("checkpoints/gpt2"))  # doctest: +SKIP
        """
        return cls.from_pretrained(source, **kwargs)

    def _tl_flags(self, fold_ln: bool, center_writing_weights: bool, **rest: bool) -> ProcessingFlags:
        """The flags TransformerLens would apply on this architecture, warning for the ones it skips."""
        norm = self.cfg.normalization
        if fold_ln and norm is None:
            warnings.warn("this model has no LayerNorm or RMSNorm, so fold_ln is skipped", stacklevel=3)
            fold_ln = False
        if center_writing_weights and norm != "LN":
            warnings.warn(
                f"this model does not use LayerNorm (normalization={norm!r}), so the writing weights cannot be "
                "centered; center_writing_weights is skipped",
                stacklevel=3,
            )
            center_writing_weights = False
        elif center_writing_weights and self.cfg.use_normalization_after_only:
            warnings.warn(
                "attention and MLP read the residual stream without a norm (use_normalization_after_only=True), "
                "so the writing weights cannot be centered; center_writing_weights is skipped",
                stacklevel=3,
            )
            center_writing_weights = False
        return ProcessingFlags(fold_ln=fold_ln, center_writing_weights=center_writing_weights, **rest)

    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """Process the weights in place with TransformerLens's defaults (value biases are folded too).

        Next-token log-probs are unchanged. A step the architecture cannot honour is skipped with a
        warning (TransformerLens's behaviour); ``process_weights`` raises instead.

        >>> model.process_weights_()                        # fold_ln, centering, value biases  # doctest: +SKIP
        """
        flags = self._tl_flags(
            fold_ln,
            center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=True,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )
        process_weights(self, flags)

    def load_and_process_state_dict(
        self,
        state_dict: dict[str, Tensor],
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """Load a lens-format state dict (missing keys filled from the model), then process as TransformerLens.

        The keys are lens's (``model.state_dict()``: fused ``attn.qkv_weight``, ...), not TransformerLens's.
        Flags are checked before anything is loaded.

        >>> model.load_and_process_state_dict(torch.load("ckpt.pt"), center_unembed=False)  # doctest: +SKIP
        """
        flags = self._tl_flags(
            fold_ln,
            center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )
        flags.check(self.cfg)
        self.load_state_dict(fill_missing_keys(self, dict(state_dict)))
        process_weights(self, flags)

    # -- TransformerLens's state-dict steps -------------------------------------------------------------
    def _processed_state_dict(self, state_dict: dict[str, Tensor], flag: str) -> dict[str, Tensor]:
        """``state_dict`` after one processing step, computed on a scratch copy of this model."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
        ProcessingFlags(**{flag: True}).check(self.cfg)
        # A deep copy owns its cfg too (a step may switch cfg flags: biases it creates, untying); the
        # tokenizer is shared, not copied.
        scratch = copy.deepcopy(self, memo={id(self.tokenizer): self.tokenizer})
        _adopt_structure(scratch, state_dict)
        scratch.load_state_dict(state_dict)
        process_weights(scratch, ProcessingFlags(**{flag: True}))
        return scratch.state_dict()

    def fold_layer_norm(
        self, state_dict: dict[str, Tensor], fold_biases: bool = True, center_weights: bool = True
    ) -> dict[str, Tensor]:
        """``state_dict`` (lens keys) with every norm folded into its readers, as ``process_weights(fold_ln=True)``.

        The norms stay, with weight 1 and bias 0; LayerNorm biases become biases of the reading layers
        (created where missing, so the result may have keys the model lacks until it is processed). As
        TransformerLens, ``fold_biases`` / ``center_weights`` apply to LayerNorm (RMSNorm has neither);
        lens folds LayerNorm only with both on (``ValueError`` otherwise).

        >>> model.load_state_dict(model.fold_layer_norm(model.state_dict()), strict=False)  # doctest: +SKIP
        """
        if self.cfg.normalization == "LN" and not (fold_biases and center_weights):
            raise ValueError(
                f"fold_layer_norm on a LayerNorm model folds the bias and centres the weights together; got "
                f"fold_biases={fold_biases}, center_weights={center_weights} (both must be True)"
            )
        return self._processed_state_dict(state_dict, "fold_ln")

    def center_writing_weights(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state_dict`` with the writing weights centred (:func:`lens.processing.center_writing_weights`)."""
        return self._processed_state_dict(state_dict, "center_writing_weights")

    def center_unembed(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state_dict`` with ``W_U`` / ``b_U`` centred over the vocabulary (``lens.processing``)."""
        return self._processed_state_dict(state_dict, "center_unembed")

    def fold_value_biases(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state_dict`` with ``b_V`` folded into ``b_O`` (:func:`lens.processing.fold_value_biases`)."""
        return self._processed_state_dict(state_dict, "fold_value_biases")

    def refactor_factored_attn_matrices(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state_dict`` with balanced QK/OV factors (:func:`lens.processing.refactor_factored_attn_matrices`)."""
        return self._processed_state_dict(state_dict, "refactor_factored_attn_matrices")

    def fill_missing_keys(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """:func:`fill_missing_keys` for this model."""
        return fill_missing_keys(self, state_dict)

    # -- TransformerLens's forward pieces ------------------------------------------------------------
    def get_pos_offset(self, past_kv_cache: Any, batch_size: int) -> int:
        """Positions already in ``past_kv_cache`` (0 without one); ``ValueError`` if its batch differs.

        >>> model.get_pos_offset(cache, batch_size=1)           # after a 5-token prefill  # doctest: +SKIP
        5
        """
        if past_kv_cache is None:
            return 0
        offset, batch = getattr(past_kv_cache, "offset", None), getattr(past_kv_cache, "batch", None)
        if offset is None or batch is None:
            raise TypeError(f"past_kv_cache must be a lens KVCache, got {type(past_kv_cache).__name__}")
        if batch != batch_size:
            raise ValueError(f"the KV cache holds batch={batch}, but batch_size={batch_size}")
        return int(offset)

    def get_residual(
        self,
        embed: Float[Tensor, "batch pos d_model"],
        pos_offset: int,
        prepend_bos: bool | None = None,
        attention_mask: Tensor | None = None,
        tokens: Tensor | None = None,
        return_shortformer_pos_embed: bool = True,
        device: Any = None,
    ) -> Any:
        """``embed`` plus the positional embedding of positions ``pos_offset...`` (through ``hook_pos_embed``).

        As TransformerLens: with ``attention_mask`` (``[batch, pos_offset + pos]``, cached positions
        included) positions count real tokens only and padding positions get no positional embedding;
        rotary models return ``embed`` unchanged. Returns ``(residual, None)`` (no shortformer embedding
        in lens) or, with ``return_shortformer_pos_embed=False``, the residual alone. ``prepend_bos``,
        ``tokens`` and ``device`` are accepted for TransformerLens's signature and not needed.

        >>> resid, _ = model.get_residual(model.hook_embed(model.embed(tokens)), 0)      # doctest: +SKIP
        """
        if not isinstance(embed, Tensor) or embed.ndim != 3 or embed.shape[-1] != self.cfg.d_model:
            raise ValueError(
                f"embed must be [batch, pos, d_model={self.cfg.d_model}], got {getattr(embed, 'shape', embed)}"
            )
        if isinstance(pos_offset, bool) or not isinstance(pos_offset, int) or pos_offset < 0:
            raise ValueError(f"pos_offset must be an int >= 0, got {pos_offset!r}")
        batch, n = embed.shape[:2]
        self._check_length(pos_offset + n)
        residual = embed
        if self.cfg.positional == "learned":
            if attention_mask is None:
                ids = torch.arange(pos_offset, pos_offset + n, device=embed.device).expand(batch, n)
                pos = self.pos_embed(ids)
            else:
                mask = self.check_attention_mask(attention_mask, batch, pos_offset + n)
                ids = get_offset_position_ids(pos_offset, mask.long()).to(embed.device)
                pad = ~mask.bool()[:, pos_offset:, None].to(embed.device)
                pos = self.pos_embed(ids).masked_fill(pad, 0.0)
            residual = embed + self.hook_pos_embed(pos)
        return (residual, None) if return_shortformer_pos_embed else residual

    def to_single_str_token(self, int_token: int) -> str:
        """The string of one token id (``TypeError`` for anything but an int).

        >>> model.to_single_str_token(72)                    # doctest: +SKIP
        'H'
        """
        if isinstance(int_token, bool) or not isinstance(int_token, int):
            raise TypeError(f"to_single_str_token takes one int token id, got {type(int_token).__name__}")
        return self.to_string(int_token)

    def all_composition_scores(self, mode: str) -> Float[Tensor, "layer1 head1 layer2 head2"]:
        """Composition scores of every head pair, zero unless the first head's layer is the earlier one.

        ``mode``: ``"Q"``, ``"K"`` or ``"V"`` composition (Elhage et al. 2021): the first head's OV
        circuit against the second head's QK (query side), QK transposed (key side) or OV circuit;
        ``lens.utils.composition_scores`` of those factored matrices.

        >>> scores = model.all_composition_scores("K")            # doctest: +SKIP
        >>> scores[0, :, 1, :]                                   # layer-0 heads into layer-1 keys  # doctest: +SKIP
        """
        if mode not in COMPOSITION_MODES:
            raise ValueError(f"mode must be one of {list(COMPOSITION_MODES)}, got {mode!r}")
        right = {"Q": self.QK, "K": self.QK.T, "V": self.OV}[mode]
        scores = composition_scores(self.OV, right, broadcast_dims=True)
        layers = torch.arange(self.cfg.n_layers, device=scores.device)
        later = layers[:, None, None, None] < layers[None, None, :, None]
        return torch.where(later, scores, torch.zeros_like(scores))

    def mps(self):
        """``self.to("mps")`` (TransformerLens's shorthand)."""
        return self.to(torch.device("mps"))

    def move_model_modules_to_device(self):
        """Move every module to ``cfg.device``; a placed model (``from_pretrained(n_devices=...)`` or
        ``device_map=...``) already has each module on its device and is left as it is. Returns self."""
        if self.placement is not None:
            return self
        return self.to(self.cfg.device) if self.cfg.device is not None else self
