"""`TransformerConfig`: the validated description of a lens transformer.

Every architectural choice lives here as data, so shared components never test family names: a
per-family adapter (``lens.families``) turns a Hugging Face config into one of these.

Example:
    >>> cfg = TransformerConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=100, n_ctx=128)
    >>> cfg.d_head, cfg.d_mlp
    (16, 256)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

ACTIVATIONS = ("gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "silu", "relu", "quick_gelu", "solu_ln")
NORMALIZATIONS = ("LN", "RMS", None)
POSITIONALS = ("learned", "rotary", None)
QK_NORM_SCOPES = ("head", "projection")  # what one q/k norm covers: one head, or the whole projection

# Models trained on longer contexts load with this ``n_ctx`` (``context_size_override`` raises it up to
# ``n_ctx_trained``); the one definition, read by the families' configs and by lens.loading.
DEFAULT_MAX_CONTEXT = 4096

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Turn ``"bf16"``, ``"torch.float16"`` or a ``torch.dtype`` into a floating ``torch.dtype``.

    >>> resolve_dtype("bf16")
    torch.bfloat16
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.removeprefix("torch.").lower()
        if key in _DTYPES:
            return _DTYPES[key]
        raise ValueError(f"dtype {dtype!r} is not a dtype; use one of {sorted(set(_DTYPES))} or a torch.dtype")
    raise TypeError(f"dtype must be a str or torch.dtype, got {type(dtype).__name__}")


# rope_scaling types lens implements (lens.components.rotary); any other raises when the config is built
ROPE_TYPES = (None, "default", "linear", "llama3", "yarn", "dynamic", "longrope")


def _check_rope_scaling(kind: str, scaling: dict[str, Any], rotary_dim: int | None) -> None:
    """The keys a rope scaling type needs (``ValueError`` naming the missing or malformed key)."""

    def need(key: str, why: str = "") -> None:
        if scaling.get(key) is None:
            raise ValueError(f"rope_scaling type {kind!r} needs {key!r}{why}; got keys {sorted(scaling)}")

    def number(key: str) -> None:
        value = scaling.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"rope_scaling[{key!r}]={value!r} must be a positive number (rope type {kind!r})")

    context = ("original_max_position_embeddings", "max_position_embeddings")
    if kind in ("linear", "llama3", "dynamic"):
        need("factor")
    if kind in ("llama3", "yarn", "longrope") and all(scaling.get(k) is None for k in context):
        need("original_max_position_embeddings", " (or 'max_position_embeddings', its fallback)")
    if kind == "dynamic":
        need("max_position_embeddings", " (the context the dynamic base starts growing after)")
    if kind in ("yarn", "longrope") and scaling.get("factor") is None:
        need("max_position_embeddings", " to derive 'factor' (max_position_embeddings / original), or 'factor'")
    for key in ("factor", "attention_factor", *context):
        number(key)
    if kind == "longrope":
        half = None if rotary_dim is None else rotary_dim // 2
        for key in ("short_factor", "long_factor"):
            need(key)
            value = scaling[key]
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
            ):
                raise ValueError(f"rope_scaling[{key!r}] must be a list of numbers (rope type 'longrope')")
            if half is not None and len(value) != half:
                raise ValueError(
                    f"rope_scaling[{key!r}] has {len(value)} entries; longrope needs rotary_dim / 2 = {half}"
                )


@dataclass
class TransformerConfig:
    """Architecture and runtime settings of a :class:`lens.HookedTransformer`.

    Derived fields: ``d_head`` defaults to ``d_model // n_heads``, ``d_mlp`` to ``4 * d_model``,
    ``n_key_value_heads`` to ``n_heads`` (plain multi-head attention), ``rotary_dim`` to ``d_head``.
    Inconsistent values raise ``ValueError`` at construction.

    ``d_vocab_out`` (default ``d_vocab``) is the number of logits, TransformerLens's field of that name: the
    unembedding is ``[d_model, d_vocab_out]``, for models whose output vocabulary differs from the input one.

    Hook flags (TransformerLens's names; the model's ``set_use_*`` methods toggle them after construction):
    ``use_attn_result`` (``attn.hook_result``), ``use_split_qkv_input`` (``hook_q/k/v_input``),
    ``use_hook_mlp_in`` (``hook_mlp_in``), ``use_attn_in`` (``hook_attn_in``), ``use_hook_tokens``
    (``hook_tokens`` on the input ids); ``ungroup_grouped_query_attention``: under grouped-query attention
    ``hook_k``/``hook_v``/``hook_rot_k`` show one key/value head per query head (same numbers).
    ``act_fn="solu_ln"``: SoLU ``x * softmax(x)`` (``mlp.hook_mid``) followed by a LayerNorm over ``d_mlp``
    (``mlp.ln``; with its weight and bias when ``normalization="LN"``, centre-and-scale only otherwise).

    ``use_qk_norm`` (Qwen3, Gemma 3; TransformerLens's name): an RMSNorm over ``d_head`` on every query and
    key head after the projection and before rotary (``attn.q_norm`` / ``attn.k_norm``, each with
    ``hook_scale`` and ``hook_normalized``); ``hook_q`` / ``hook_k`` see the projections before it.
    ``qk_norm_scope`` says what one norm covers: ``"head"`` (default; the above) or ``"projection"`` (OLMo-2):
    one RMSNorm over the whole query projection (``n_heads * d_head`` features, its own weight per feature)
    and one over the whole key projection (``n_key_value_heads * d_head``), so the scale is shared by the
    heads of a position; ``q_norm`` / ``k_norm`` then see ``[batch, pos, n * d_head]`` (hook_scale
    ``[batch, pos, 1]``; under ``ungroup_grouped_query_attention`` the keys are normalised one copy of the
    key heads at a time, ``[batch, pos, n_heads // n_key_value_heads, n_key_value_heads * d_head]``).

    Gemma 2 / 3 (TransformerLens's names): ``use_normalization_before_and_after`` adds a norm after each
    sublayer ("sandwich" norms: ``ln1_post`` on the attention output, ``ln2_post`` on the MLP output, before
    ``hook_attn_out`` / ``hook_mlp_out`` and the residual add); ``attn_scores_soft_cap=c`` caps attention
    scores as ``c * tanh(scores / c)`` (before masking; ``hook_attn_scores`` sees the capped scores; such a
    layer always runs the explicit attention path, since SDPA cannot cap); ``output_logits_soft_cap=c`` caps
    the logits the same way.

    ``use_normalization_after_only`` (OLMo-2): post-norm-only blocks, ``resid_mid = resid_pre +
    ln1_post(attn(resid_pre))`` and ``resid_post = resid_mid + ln2_post(mlp(resid_mid))``: no ``ln1`` /
    ``ln2`` (attention and MLP read the raw residual stream), ``ln1_post`` / ``ln2_post`` as with sandwich
    norms (before ``hook_attn_out`` / ``hook_mlp_out``). Excludes ``use_normalization_before_and_after``.

    Mixture of experts (Mixtral, Qwen3-MoE; TransformerLens's names): ``num_experts`` gated MLPs per layer
    behind a router that sends each token to ``experts_per_token`` of them (``blocks.{i}.mlp`` is then a
    :class:`lens.components.moe.MoE`); ``moe_renormalize``: the chosen experts' softmax probabilities are
    rescaled to sum to one (Mixtral; Qwen3-MoE's ``norm_topk_prob``).

    ``rotary_adjacent_pairs`` (GPT-J; TransformerLens's name): rotary rotates adjacent feature pairs
    ``(0, 1), (2, 3), ...`` instead of the two halves of the rotary features (the GPT-NeoX / Llama convention).

    Sliding windows: ``window_size=w`` with ``window_layers`` (None: every layer) gives those layers a window of
    ``w`` keys (a query sees itself and the ``w - 1`` keys before it); ``window_size=(w0, None, w2, ...)`` gives
    each layer its own window (None: global), with ``window_layers`` left None. ``layer_window(i)`` reads either.

    ``rotary_base_local`` (Gemma 3; TransformerLens's name): the rotary base of the sliding-window (local)
    layers, which use no ``rope_scaling``; the global layers use ``rotary_base`` and ``rope_scaling``.

    ``n_ctx`` is the context lens accepts; ``n_ctx_trained`` the maximum the weights were trained for
    (``context_size_override`` may raise ``n_ctx`` up to it). Nothing is allocated per position, so a
    large ``n_ctx`` costs no memory until it is used.

    Example:
        >>> TransformerConfig(n_layers=1, d_model=64, n_heads=4, n_key_value_heads=2,
        ...                   d_vocab=100, n_ctx=64, positional="rotary", normalization="RMS",
        ...                   act_fn="silu", gated_mlp=True).n_key_value_heads
        2
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_vocab: int
    n_ctx: int
    d_head: int | None = None
    n_key_value_heads: int | None = None
    d_mlp: int | None = None
    act_fn: str = "gelu_new"
    normalization: str | None = "LN"
    eps: float = 1e-5
    positional: str | None = "learned"
    rotary_base: float = 10000.0
    rotary_dim: int | None = None
    rope_scaling: dict[str, Any] | None = None
    rotary_base_local: float | None = None
    rotary_adjacent_pairs: bool = False
    window_size: int | tuple[int | None, ...] | None = None
    window_layers: tuple[int, ...] | None = None
    gated_mlp: bool = False
    parallel_attn_mlp: bool = False
    attn_only: bool = False
    tie_word_embeddings: bool = False
    d_vocab_out: int | None = None
    qkv_bias: bool = True
    attn_out_bias: bool = True
    mlp_bias: bool = True
    unembed_bias: bool = False
    norm_bias: bool = True
    embedding_multiplier: float | None = None
    attn_scale: float | None = None
    n_ctx_trained: int | None = None
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_hook_mlp_in: bool = False
    use_attn_in: bool = False
    use_hook_tokens: bool = False
    ungroup_grouped_query_attention: bool = False
    use_qk_norm: bool = False
    qk_norm_scope: str = "head"
    use_normalization_before_and_after: bool = False
    use_normalization_after_only: bool = False
    attn_scores_soft_cap: float | None = None
    output_logits_soft_cap: float | None = None
    num_experts: int | None = None
    experts_per_token: int | None = None
    moe_renormalize: bool = True
    default_prepend_bos: bool = True
    default_padding_side: str = "right"
    tokenizer_name: str | None = None
    model_name: str = "custom"
    dtype: torch.dtype | str = torch.float32
    device: str | torch.device | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx"):
            _check_positive_int(name, getattr(self, name))
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "set d_head explicitly or choose compatible sizes"
                )
            self.d_head = self.d_model // self.n_heads
        _check_positive_int("d_head", self.d_head)
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        _check_positive_int("n_key_value_heads", self.n_key_value_heads)
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_key_value_heads={self.n_key_value_heads}")
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.d_vocab_out is None:
            self.d_vocab_out = self.d_vocab
        _check_positive_int("d_vocab_out", self.d_vocab_out)
        if self.tie_word_embeddings and self.d_vocab_out != self.d_vocab:
            raise ValueError(
                f"tie_word_embeddings=True needs d_vocab_out == d_vocab, got d_vocab_out={self.d_vocab_out}, "
                f"d_vocab={self.d_vocab}"
            )
        if not self.attn_only:
            _check_positive_int("d_mlp", self.d_mlp)
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r} is not supported; choose one of {ACTIVATIONS}")
        if self.act_fn == "solu_ln" and self.gated_mlp:
            raise ValueError("act_fn='solu_ln' (SoLU with its LayerNorm) needs a plain MLP, but gated_mlp=True")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={self.normalization!r} must be one of {NORMALIZATIONS}")
        if self.positional not in POSITIONALS:
            raise ValueError(f"positional={self.positional!r} must be one of {POSITIONALS}")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise ValueError(f"eps={self.eps!r} must be a positive number")
        if self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.positional == "rotary":
            _check_positive_int("rotary_dim", self.rotary_dim)
            if self.rotary_dim > self.d_head or self.rotary_dim % 2:
                raise ValueError(f"rotary_dim={self.rotary_dim} must be even and <= d_head={self.d_head}")
            if self.rotary_base <= 0:
                raise ValueError(f"rotary_base={self.rotary_base} must be positive")
        if self.rope_scaling:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ROPE_TYPES:
                raise ValueError(
                    f"rope_scaling type {kind!r} is not supported (supported: {', '.join(map(str, ROPE_TYPES[1:]))})"
                )
            if self.positional == "rotary":
                _check_rope_scaling(kind, self.rope_scaling, self.rotary_dim)
        if self.rotary_base_local is not None:
            if self.positional != "rotary" or not self.rotary_base_local > 0:
                raise ValueError(
                    f"rotary_base_local={self.rotary_base_local!r} needs positional='rotary' and a positive base"
                )
        if isinstance(self.window_size, (list, tuple)):  # one entry per layer: a window or None (global)
            if self.window_layers is not None:
                raise ValueError("window_size is given per layer, so window_layers must be None (it would be ignored)")
            if len(self.window_size) != self.n_layers:
                raise ValueError(
                    f"window_size has {len(self.window_size)} per-layer entries, but n_layers={self.n_layers}"
                )
            self.window_size = tuple(self.window_size)
            for i, w in enumerate(self.window_size):
                if w is not None:
                    _check_positive_int(f"window_size[{i}]", w)
        elif self.window_size is not None:
            _check_positive_int("window_size", self.window_size)
        if self.window_layers is not None:
            self.window_layers = tuple(int(i) for i in self.window_layers)
            bad = [i for i in self.window_layers if not 0 <= i < self.n_layers]
            if bad:
                raise ValueError(f"window_layers {bad} are outside [0, n_layers={self.n_layers})")
        for name in ("attn_scores_soft_cap", "output_logits_soft_cap"):
            cap = getattr(self, name)
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0):
                raise ValueError(f"{name}={cap!r} must be None (no cap) or a positive number")
        if self.num_experts is not None or self.experts_per_token is not None:
            self._check_moe()
        if self.parallel_attn_mlp and self.attn_only:
            raise ValueError("parallel_attn_mlp=True needs an MLP, but attn_only=True")
        if self.qk_norm_scope not in QK_NORM_SCOPES:
            raise ValueError(f"qk_norm_scope={self.qk_norm_scope!r} must be one of {QK_NORM_SCOPES}")
        if self.qk_norm_scope != "head" and not self.use_qk_norm:
            raise ValueError(f"qk_norm_scope={self.qk_norm_scope!r} needs use_qk_norm=True")
        if self.use_normalization_after_only:
            if self.use_normalization_before_and_after:
                raise ValueError(
                    "use_normalization_after_only=True (post-norm only) excludes use_normalization_before_and_after"
                )
            if self.normalization is None:
                raise ValueError("use_normalization_after_only=True needs a normalization, got normalization=None")
        if self.n_ctx_trained is not None:
            _check_positive_int("n_ctx_trained", self.n_ctx_trained)
        if self.default_padding_side not in ("left", "right"):
            raise ValueError(f"default_padding_side={self.default_padding_side!r} must be 'left' or 'right'")
        self.dtype = resolve_dtype(self.dtype)

    def _check_moe(self) -> None:
        if self.num_experts is None or self.experts_per_token is None:
            raise ValueError(
                f"a mixture-of-experts MLP needs both num_experts and experts_per_token, got "
                f"num_experts={self.num_experts}, experts_per_token={self.experts_per_token}"
            )
        _check_positive_int("num_experts", self.num_experts)
        _check_positive_int("experts_per_token", self.experts_per_token)
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"experts_per_token={self.experts_per_token} must be <= num_experts={self.num_experts}")
        if not self.gated_mlp or self.attn_only:
            raise ValueError("a mixture-of-experts MLP (num_experts set) needs gated_mlp=True and attn_only=False")

    # -- helpers -------------------------------------------------------------------------------
    def is_layer_norm_activation(self) -> bool:
        """Whether the MLP activation carries its own LayerNorm (``"solu_ln"``), as TransformerLens's config.

        >>> cfg = TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_vocab=10, n_ctx=4, act_fn="solu_ln")
        >>> cfg.is_layer_norm_activation()
        True
        """
        return self.act_fn.endswith("_ln")

    def layer_window(self, layer: int) -> int | None:
        """The sliding-window size used by ``layer`` (None: full causal attention)."""
        if self.window_size is None:
            return None
        if isinstance(self.window_size, tuple):
            return self.window_size[layer]
        if self.window_layers is None or layer in self.window_layers:
            return self.window_size
        return None

    @property
    def n_params(self) -> int:
        """Approximate count of weight-matrix parameters (TransformerLens convention: no embeddings)."""
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_key_value_heads)
        mlp = 0 if self.attn_only else self.d_model * self.d_mlp * (3 if self.gated_mlp else 2)
        if self.num_experts is not None:  # every expert's MLP plus the router
            mlp = mlp * self.num_experts + self.d_model * self.num_experts
        return self.n_layers * (attn + mlp)

    def replace(self, **changes: Any) -> TransformerConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (dtype and device as strings)."""
        out = dataclasses.asdict(self)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        out["device"] = None if self.device is None else str(self.device)
        for name in ("window_layers", "window_size"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields: {unknown}")
        return cls(**data)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
