"""`SAEConfig`: what a sparse autoencoder (or transcoder) is, validated on construction.

Field names follow SAELens (``architecture``, ``d_in``, ``d_sae``, ``hook_name``, ``apply_b_dec_to_input``,
``normalize_activations``, ``dtype``, ``device``; ``k`` for TopK). ``hook_name_out`` set makes a transcoder:
it reads the activation at ``hook_name`` and writes its reconstruction at ``hook_name_out`` (width ``d_out``).

>>> cfg = SAEConfig(architecture="topk", d_in=64, d_sae=512, hook_name="blocks.1.hook_resid_post", k=8)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("standard", "topk", "jumprelu")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
RESHAPES = ("none", "hook_z")
DTYPES = ("float32", "float64", "float16", "bfloat16")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"SAEConfig.{name} must be a positive int, got {value!r}")


@dataclass
class SAEConfig:
    """An SAE's architecture and where it reads (and writes) in a model.

    ``architecture``: ``"standard"`` (ReLU), ``"topk"`` (needs ``k``), ``"jumprelu"`` (a learned ``threshold``).
    ``normalize_activations`` (SAELens's values): ``"none"``; ``"expected_average_only_in"`` (the input is
    multiplied by ``sae.norm_scaling_factor``, chosen so the average input norm is ``sqrt(d_in)``, and the
    output divided by it); ``"constant_norm_rescale"`` (each input scaled to norm ``sqrt(d_in)``, the output
    scaled back); ``"layer_norm"`` (each input centred and divided by its std + 1e-5, the output un-done).
    ``reshape_activations`` (SAELens's field): ``"none"``, or ``"hook_z"`` for an SAE on ``attn.hook_z`` with the
    heads flattened: its input ``[..., n_heads, d_head]`` is read as ``[..., d_in = n_heads * d_head]`` and
    ``forward`` / ``reconstruct`` give back the input's shape (``encode``'s hooks and ``decode`` see the flat form).
    ``metadata``: free-form (``model_name``, ``source``, ...), written to and read from cfg.json.
    """

    architecture: str
    d_in: int
    d_sae: int
    hook_name: str
    hook_name_out: str | None = None
    d_out: int | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    dtype: str = "float32"
    device: str = "cpu"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAEConfig.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        _positive_int("d_in", self.d_in)
        _positive_int("d_sae", self.d_sae)
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ValueError(f"SAEConfig.hook_name must be a non-empty hook name (str), got {self.hook_name!r}")
        if self.hook_name_out is not None and (not isinstance(self.hook_name_out, str) or not self.hook_name_out):
            raise ValueError(f"SAEConfig.hook_name_out must be None or a hook name (str), got {self.hook_name_out!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        _positive_int("d_out", self.d_out)
        if self.hook_name_out is None and self.d_out != self.d_in:
            raise ValueError(
                f"SAEConfig.d_out={self.d_out} differs from d_in={self.d_in}, which only a transcoder "
                "(hook_name_out set) may do"
            )
        if self.architecture == "topk":
            if self.k is None:
                raise ValueError("SAEConfig.k is required for architecture='topk', got None")
            _positive_int("k", self.k)
            if self.k > self.d_sae:
                raise ValueError(f"SAEConfig.k={self.k} must be at most d_sae={self.d_sae}")
        elif self.k is not None:
            raise ValueError(
                f"SAEConfig.k is only for architecture='topk', got k={self.k!r} with {self.architecture!r}"
            )
        if not isinstance(self.apply_b_dec_to_input, bool):
            raise ValueError(f"SAEConfig.apply_b_dec_to_input must be a bool, got {self.apply_b_dec_to_input!r}")
        if self.apply_b_dec_to_input and self.d_out != self.d_in:
            raise ValueError(
                f"SAEConfig.apply_b_dec_to_input=True needs d_out == d_in (b_dec is subtracted from the input), "
                f"got d_in={self.d_in}, d_out={self.d_out}"
            )
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"SAEConfig.normalize_activations must be one of {NORMALIZATIONS}, got {self.normalize_activations!r}"
            )
        if self.reshape_activations not in RESHAPES:
            raise ValueError(
                f"SAEConfig.reshape_activations must be one of {RESHAPES}, got {self.reshape_activations!r}"
            )
        if self.reshape_activations == "hook_z" and self.d_out != self.d_in:
            raise ValueError(
                f"SAEConfig.reshape_activations='hook_z' needs d_out == d_in (the output has the input's heads), "
                f"got d_in={self.d_in}, d_out={self.d_out}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"SAEConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"SAEConfig.device must be a str, got {self.device!r}")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"SAEConfig.metadata must be a dict, got {type(self.metadata).__name__}")

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out is not None

    def replace(self, **changes: Any) -> SAEConfig:
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
