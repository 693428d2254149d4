"""Opt-in weight processing that keeps next-token log-probs (TransformerLens's definitions).

The default is faithful weights (logits equal Hugging Face's); these rewrites make the weights easier
to read without changing what the model computes. The architecture and every hook stay in place.

- ``fold_ln``: fold each norm's weight (and LayerNorm bias) into the linear layers that read it
  (ln1 -> q/k/v, ln2 -> MLP in and gate, ln_final -> unembed); the norm is left with weight 1 and
  bias 0. With LayerNorm the reading weights are also centred over ``d_model`` (the norm's output
  has zero mean, so this changes nothing). Tied embeddings are untied first: the embedding keeps
  its values and the unembedding gets its own, folded copy (``cfg.tie_word_embeddings = False``).
  Norms after a sublayer (``ln1_post`` / ``ln2_post``) write to the residual stream, which no linear
  layer reads directly, so they stay as they are; post-norm-only blocks (``use_normalization_after_only``,
  no ``ln1`` / ``ln2``) therefore fold ``ln_final`` alone.
- ``center_writing_weights``: subtract the mean over ``d_model`` from every weight and bias writing
  to the residual stream (``W_E``, ``W_pos``, ``W_O``/``b_O``, ``W_out``/``b_out``). Valid only when
  every reader of the stream is a LayerNorm, which discards that mean; ``ValueError`` otherwise
  (RMSNorm, or post-norm-only blocks whose attention and MLP read the stream itself).
- ``center_unembed``: subtract the mean over the vocabulary from ``W_U`` and ``b_U`` (shifts all
  logits of a position equally, so log-softmax is unchanged). Unties tied embeddings first.
- ``fold_value_biases``: ``b_V`` passes through attention unchanged (pattern rows sum to one), so
  it is folded through ``W_O`` into ``b_O`` and zeroed. Creates ``b_O`` (``cfg.attn_out_bias``) when
  the model has none; a no-op when there are no value biases.
- ``refactor_factored_attn_matrices``: re-factor each head's ``W_Q W_K^T`` and ``W_V W_O`` into the
  balanced forms TransformerLens uses (same products, so the same outputs): with the SVD
  ``[W_Q; b_Q] [W_K; b_K]^T = U S V^T`` (the biases as an extra input row that is always 1),
  ``[W_Q; b_Q] = U sqrt(S)`` and ``[W_K; b_K] = V sqrt(S)``; value biases are folded into ``b_O``
  as above, and with ``W_V W_O = U S V^T``, ``W_V = U S`` and ``W_O = V^T`` (a rotation, so ``z`` has
  the norm of the head's output). Refused (``ValueError``) for rotary models, whose QK product
  depends on positions, and for grouped-query attention, whose key/value heads are shared.

Biases a fold needs are created as zeros and the matching ``cfg`` flag switched on. Arithmetic runs
in at least float32 and is cast back to the parameter dtype. The five flags travel together as one
:class:`ProcessingFlags`, validated once where a caller first names them.

>>> model = process_weights(model, fold_ln=True, center_unembed=True)   # doctest: +SKIP
>>> model.blocks[0].ln1.w.unique()                                      # doctest: +SKIP
tensor([1.])
>>> flags = ProcessingFlags(fold_ln=True, center_unembed=True)          # the same request as one value
>>> model = process_weights(model, flags)                               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lens.components.linear import input_major
from lens.config import TransformerConfig
from lens.factored_matrix import FactoredMatrix

__all__ = [
    "ProcessingFlags",
    "center_unembed",
    "center_writing_weights",
    "check_processing",
    "fold_layer_norm",
    "fold_value_biases",
    "process_weights",
    "refactor_factored_attn_matrices",
    "untie_embeddings",
]


FLAG_NAMES = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
)


@dataclass(frozen=True)
class ProcessingFlags:
    """Which opt-in processing steps to apply (all off by default), validated once.

    Field order is TransformerLens's order of application. Entry points that take the flags as keywords
    (``from_pretrained(fold_ln=True)``, ``process_weights(model, fold_ln=True)``) build one of these and
    pass it on.

    >>> ProcessingFlags(fold_ln=True, center_unembed=True).requested
    ('fold_ln', 'center_unembed')
    >>> ProcessingFlags(fold_ln="yes")
    Traceback (most recent call last):
    ...
    TypeError: fold_ln must be a bool, got str ('yes')
    """

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False
    refactor_factored_attn_matrices: bool = False

    def __post_init__(self) -> None:
        for name in FLAG_NAMES:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")

    @classmethod
    def resolve(cls, flags: ProcessingFlags | None, keywords: dict[str, Any], caller: str) -> ProcessingFlags:
        """``flags``, or the flags given as ``caller``'s keyword arguments (unknown names raise TypeError)."""
        if flags is None:
            unknown = [name for name in keywords if name not in FLAG_NAMES]
            if unknown:
                raise TypeError(
                    f"{caller}() got an unexpected keyword argument {unknown[0]!r}; "
                    f"the processing flags are {', '.join(FLAG_NAMES)}"
                )
            return cls(**keywords)
        if not isinstance(flags, ProcessingFlags):
            raise TypeError(f"flags must be a ProcessingFlags, got {type(flags).__name__} ({flags!r})")
        if keywords:
            raise TypeError(f"{caller}(): pass either a ProcessingFlags or keyword flags, not both")
        return flags

    @property
    def requested(self) -> tuple[str, ...]:
        """Names of the steps switched on, in the order they are applied."""
        return tuple(name for name in FLAG_NAMES if getattr(self, name))

    def check(self, cfg: TransformerConfig) -> None:
        """Raise ``ValueError`` if a requested step cannot preserve ``cfg``'s outputs."""
        if self.fold_ln and cfg.normalization is None:
            raise ValueError("fold_ln needs normalization layers, but this model has none (normalization=None)")
        if self.center_writing_weights and cfg.normalization != "LN":
            raise ValueError(
                "center_writing_weights needs LayerNorm before every reader of the residual stream (it relies on "
                f"the norm removing the mean), but this model uses normalization={cfg.normalization!r}; "
                "load without center_writing_weights"
            )
        if self.center_writing_weights and cfg.use_normalization_after_only:
            raise ValueError(
                "center_writing_weights needs LayerNorm before every reader of the residual stream (it relies on "
                "the norm removing the mean), but with use_normalization_after_only=True attention and MLP read "
                "the stream without a norm; load without center_writing_weights"
            )
        if self.fold_ln and cfg.num_experts is not None and cfg.normalization == "LN" and cfg.norm_bias:
            raise ValueError(
                "fold_ln cannot fold a LayerNorm bias into a mixture-of-experts router (it has no bias: the "
                "routing would change); load without fold_ln"
            )
        if self.center_unembed and cfg.output_logits_soft_cap is not None:
            raise ValueError(
                f"center_unembed cannot keep log-probs with output_logits_soft_cap={cfg.output_logits_soft_cap} "
                "(the cap is not shift-invariant); load without it"
            )
        if self.refactor_factored_attn_matrices:
            if cfg.positional == "rotary":
                raise ValueError(
                    "refactor_factored_attn_matrices cannot be applied to a rotary model (positional='rotary'): "
                    "its QK product depends on the query and key positions; load without it"
                )
            if cfg.use_qk_norm:
                raise ValueError(
                    "refactor_factored_attn_matrices cannot be applied with use_qk_norm=True: the query/key norms "
                    "act on W_Q and W_K separately, not on their product; load without it"
                )
            if cfg.n_key_value_heads != cfg.n_heads:
                raise ValueError(
                    "refactor_factored_attn_matrices needs one key/value head per query head, but this model "
                    f"has n_key_value_heads={cfg.n_key_value_heads} < n_heads={cfg.n_heads} (grouped-query "
                    "attention shares them); load without it"
                )


def check_processing(cfg: TransformerConfig, flags: ProcessingFlags | None = None, **keywords: bool) -> None:
    """Raise ``ValueError`` if a requested processing step cannot preserve ``cfg``'s outputs.

    Takes a :class:`ProcessingFlags` or the flags as keywords (``TypeError`` for non-bools).

    >>> check_processing(TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_vocab=10, n_ctx=8,
    ...                  normalization="RMS"), center_writing_weights=True)
    Traceback (most recent call last):
    ...
    ValueError: center_writing_weights needs LayerNorm before every reader of the residual stream ...
    """
    ProcessingFlags.resolve(flags, keywords, "check_processing").check(cfg)


def process_weights(model, flags: ProcessingFlags | None = None, **keywords: bool):
    """Apply the requested steps in TransformerLens's order, in place; returns ``model``.

    The steps come as keywords (``fold_ln``, ``center_writing_weights``, ``center_unembed``,
    ``fold_value_biases``, ``refactor_factored_attn_matrices``; bools, default False) or as one
    :class:`ProcessingFlags`.

    >>> model = process_weights(model, fold_ln=True, fold_value_biases=True)   # doctest: +SKIP
    >>> model = process_weights(model, ProcessingFlags(fold_ln=True))          # doctest: +SKIP
    """
    flags = ProcessingFlags.resolve(flags, keywords, "process_weights")
    flags.check(model.cfg)
    done = flags.requested
    for name in done:
        _STEPS[name](model)
    if done:
        record = model.cfg.extra.setdefault("weight_processing", [])
        record.extend(name for name in done if name not in record)
    return model


# -- helpers ------------------------------------------------------------------------------------------
def _work(t: Tensor) -> Tensor:
    """``t`` in at least float32, detached (a copy only when the dtype changes)."""
    t = t.detach()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _set(p: Tensor, value: Tensor) -> None:
    p.copy_(value.to(p.dtype))


def _zeros_param(like: Tensor, n: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(n, dtype=like.dtype, device=like.device))


def _ensure_bias(module: nn.Module, attr: str, like: Tensor, n: int) -> Tensor:
    """``module.<attr>``, created as a zero parameter when the module has none."""
    if getattr(module, attr, None) is None:
        setattr(module, attr, _zeros_param(like, n))
    return getattr(module, attr)


def _ensure_mlp_biases(model) -> None:
    """Give every MLP in/gate/out biases (zeros) and set ``cfg.mlp_bias``; they come as a set."""
    cfg = model.cfg
    for block in model.blocks:
        for mlp in _mlps(block):
            _ensure_bias(mlp, "in_bias", mlp.in_weight, cfg.d_mlp)
            if cfg.gated_mlp:
                _ensure_bias(mlp, "gate_bias", mlp.gate_weight, cfg.d_mlp)
            _ensure_bias(mlp, "out_bias", mlp.out_weight, cfg.d_model)
    cfg.mlp_bias = True


def _mlps(block) -> list[nn.Module]:
    """The block's dense MLPs: its MLP, or every expert of a mixture-of-experts MLP."""
    mlp = getattr(block, "mlp", None)
    if mlp is None:
        return []
    return list(mlp.experts) if hasattr(mlp, "experts") else [mlp]


@torch.no_grad()
def untie_embeddings(model) -> None:
    """Give the unembedding its own copy of a tied embedding matrix (``cfg.tie_word_embeddings=False``)."""
    if model.unembed.weight is model.embed.weight or model.cfg.tie_word_embeddings:
        w = model.embed.weight
        model.unembed.weight = input_major(*w.shape, dtype=w.dtype, device=w.device)
        model.unembed.weight.detach().copy_(w)
        model.cfg.tie_word_embeddings = False


def _fold_into(
    norm: nn.Module,
    weights: list[Float[Tensor, "out d_model"]],
    biases: list[Float[Tensor, "out"] | None],
    center: bool,
) -> None:
    """Fold ``norm``'s weight (and bias) into linear layers ``x @ W.T + b`` that read its output."""
    w = _work(norm.w)
    b = None if getattr(norm, "b", None) is None else _work(norm.b)
    for weight, bias in zip(weights, biases):
        W = _work(weight)
        if b is not None and bias is not None:
            _set(bias, _work(bias) + W @ b)
        folded = W * w
        if center:
            folded = folded - folded.mean(dim=1, keepdim=True)
        _set(weight, folded)
    norm.w.fill_(1.0)
    if getattr(norm, "b", None) is not None:
        norm.b.zero_()


# -- steps --------------------------------------------------------------------------------------------
@torch.no_grad()
def fold_layer_norm(model) -> None:
    """Fold ln1 -> q/k/v, ln2 -> MLP in/gate, ln_final -> unembed; norms become weight 1, bias 0.

    Blocks without ``ln1`` / ``ln2`` (``use_normalization_after_only``) have nothing to fold there.
    """
    cfg = model.cfg
    if cfg.normalization is None:
        raise ValueError("fold_ln needs normalization layers, but this model has none")
    has_bias = cfg.normalization == "LN" and cfg.norm_bias
    center = cfg.normalization == "LN"
    if has_bias:  # the LN bias becomes a bias of every reader: make sure they have one
        for block in model.blocks:
            rows = (cfg.n_heads + 2 * cfg.n_key_value_heads) * cfg.d_head
            _ensure_bias(block.attn, "qkv_bias", block.attn.qkv_weight, rows)
        cfg.qkv_bias = True
        if not cfg.attn_only:
            _ensure_mlp_biases(model)
        _ensure_bias(model.unembed, "bias", model.unembed.weight, cfg.d_vocab)
        cfg.unembed_bias = True
    for block in model.blocks:
        if block.ln1 is not None:
            _fold_into(block.ln1, [block.attn.qkv_weight], [block.attn.qkv_bias], center)
        mlps = _mlps(block)
        if mlps and block.ln2 is not None:
            weights, biases = [], []
            if hasattr(block.mlp, "router_weight"):  # the router reads ln2's output too (it has no bias)
                weights.append(block.mlp.router_weight)
                biases.append(None)
            for mlp in mlps:
                weights.append(mlp.in_weight)
                biases.append(mlp.in_bias)
                if cfg.gated_mlp:
                    weights.append(mlp.gate_weight)
                    biases.append(mlp.gate_bias)
            _fold_into(block.ln2, weights, biases, center)
    untie_embeddings(model)
    _fold_into(model.ln_final, [model.unembed.weight], [model.unembed.bias], center)


@torch.no_grad()
def center_writing_weights(model) -> None:
    """Remove the mean over ``d_model`` from W_E, W_pos, W_O/b_O and W_out/b_out (LayerNorm models only)."""
    ProcessingFlags(center_writing_weights=True).check(model.cfg)
    untie_embeddings(model)  # centring W_E must not move a tied W_U

    def center(p: Tensor | None, dim: int) -> None:
        if p is not None:
            x = _work(p)
            _set(p, x - x.mean(dim=dim, keepdim=True))

    center(model.embed.weight, -1)
    if model.cfg.positional == "learned":
        center(model.pos_embed.weight, -1)
    for block in model.blocks:
        center(block.attn.o_weight, 0)  # [d_model, h * d_head]: d_model is dim 0
        center(block.attn.o_bias, 0)
        for mlp in _mlps(block):
            center(mlp.out_weight, 0)
            center(mlp.out_bias, 0)


@torch.no_grad()
def center_unembed(model) -> None:
    """Remove the mean over the vocabulary from W_U and b_U (log-softmax invariant)."""
    untie_embeddings(model)
    for p in (model.unembed.weight, model.unembed.bias):  # weight is [d_vocab, d_model]
        if p is not None:
            x = _work(p)
            _set(p, x - x.mean(dim=0, keepdim=True))


@torch.no_grad()
def fold_value_biases(model) -> None:
    """Fold b_V through W_O into b_O and zero b_V (no-op without q/k/v biases)."""
    cfg = model.cfg
    if not cfg.qkv_bias:
        return
    h, kv, dh = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    for block in model.blocks:
        attn = block.attn
        if attn.qkv_bias is None:
            continue
        b_v = _work(attn.qkv_bias[(h + kv) * dh :]).view(kv, dh)
        per_head = b_v.repeat_interleave(h // kv, dim=0).reshape(h * dh)  # query head -> its kv group
        o_bias = _ensure_bias(attn, "o_bias", attn.o_weight, cfg.d_model)
        _set(o_bias, _work(o_bias) + _work(attn.o_weight) @ per_head)
        attn.qkv_bias[(h + kv) * dh :].zero_()
    cfg.attn_out_bias = True


@torch.no_grad()
def refactor_factored_attn_matrices(model) -> None:
    """Balance every head's QK and OV factorisations by SVD, as TransformerLens (outputs unchanged).

    Why: ``W_Q W_K^T`` and ``W_V W_O`` are what a head computes; their factors are arbitrary up to an
    invertible ``d_head x d_head`` map. Choosing ``W_Q``/``W_K`` with equal column norms and ``W_O``
    orthonormal makes heads comparable. Singular vectors are unique only up to sign, so a column of
    ``W_Q`` (with the same column of ``W_K``) may have the opposite sign of TransformerLens's.

    >>> refactor_factored_attn_matrices(model)                          # doctest: +SKIP
    >>> torch.allclose(model.W_O[0, 0] @ model.W_O[0, 0].T, torch.eye(model.cfg.d_head), atol=1e-5)  # doctest: +SKIP
    True
    """
    ProcessingFlags(refactor_factored_attn_matrices=True).check(model.cfg)
    fold_value_biases(model)  # b_V reaches the output as b_V W_O whatever W_V is; move it to b_O first
    for block in model.blocks:
        attn = block.attn
        # The biases as one more input row (an input coordinate that is always 1) keep the bilinear form
        # (x W_Q + b_Q)(y W_K + b_K)^T exact through the refactoring.
        q_eff = torch.cat([_work(attn.W_Q), _work(attn.b_Q)[:, None, :]], dim=1)  # [head, d_model + 1, d_head]
        k_eff = torch.cat([_work(attn.W_K), _work(attn.b_K)[:, None, :]], dim=1)
        even = FactoredMatrix(q_eff, k_eff.mT).make_even()
        q_new, k_new = even.A, even.B.mT
        _set(attn.W_Q, q_new[:, :-1])
        _set(attn.W_K, k_new[:, :-1])
        if attn.qkv_bias is not None:  # without biases the extra row is zero (up to rounding)
            _set(attn.b_Q, q_new[:, -1])
            _set(attn.b_K, k_new[:, -1])
        U, S, V = FactoredMatrix(_work(attn.W_V), _work(attn.W_O)).svd()
        _set(attn.W_V, U * S[..., None, :])
        _set(attn.W_O, V.mT)


_STEPS = {  # one per ProcessingFlags field
    "fold_ln": fold_layer_norm,
    "center_writing_weights": center_writing_weights,
    "center_unembed": center_unembed,
    "fold_value_biases": fold_value_biases,
    "refactor_factored_attn_matrices": refactor_factored_attn_matrices,
}
