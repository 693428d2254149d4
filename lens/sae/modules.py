"""`SAE`: a sparse autoencoder (or transcoder) with SAELens's parameters, math and hook names.

Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]`` and, for
``jumprelu``, ``threshold [d_sae]``. The forward, as SAELens's inference SAEs:

1. ``hook_sae_input``: the input ``x`` (as given, before normalisation);
2. ``x' = normalize(x)`` (``cfg.normalize_activations``), then ``x' - b_dec`` when ``apply_b_dec_to_input``;
3. ``hook_sae_acts_pre``: ``pre = x' @ W_enc + b_enc``;
4. ``hook_sae_acts_post``: the feature activations: ``relu(pre)`` (standard); ``relu`` of the ``k`` largest
   entries of ``pre``, 0 elsewhere (topk: top-k of ``pre`` first, then ReLU, as SAELens's ``TopK``);
   ``relu(pre) * (pre > threshold)`` (jumprelu);
5. ``hook_sae_recons``: ``f @ W_dec + b_dec`` (in normalised units, as SAELens), then un-normalised;
6. ``hook_sae_error`` (only with an error term: ``x - reconstruction`` of the unhooked SAE) and
   ``hook_sae_output`` (the reconstruction, plus the error with an error term).

``SAE`` is a :class:`lens.hooks.HookedRootModule`: ``sae.run_with_cache(x)`` and ``sae.run_with_hooks`` work on
their own; attached to a model (``model.add_sae``) its hook points are named ``{hook_name}.hook_sae_*``.

>>> sae = SAE(SAEConfig("standard", d_in=8, d_sae=32, hook_name="blocks.0.hook_resid_post"))
>>> sae(torch.randn(2, 8)).shape
torch.Size([2, 8])
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lens.hooks import HookedRootModule, HookPoint
from lens.sae.config import SAEConfig

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
HOOK_NAMES = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)


class SAE(HookedRootModule):
    """A sparse autoencoder described by an :class:`SAEConfig` (see the module docstring for the math).

    Init as SAELens: Kaiming-uniform decoder with unit-norm rows, ``W_enc = W_dec.T``, zero biases,
    zero threshold. ``use_error_term`` (default False) adds ``x - reconstruction`` to the output.
    """

    def __init__(self, cfg: SAEConfig, use_error_term: bool = False, seed: int | None = None):
        super().__init__()
        if not isinstance(cfg, SAEConfig):
            raise TypeError(f"SAE(cfg) needs an SAEConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.use_error_term = use_error_term
        dtype, device = _DTYPES[cfg.dtype], torch.device(cfg.device)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else seed)
        bound = math.sqrt(6.0 / cfg.d_out)  # kaiming_uniform_ on [d_sae, d_out] (fan_in = d_out)
        w_dec = (torch.rand(cfg.d_sae, cfg.d_out, generator=gen) * 2 - 1) * bound
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        w_enc = (
            w_dec.T.clone()
            if cfg.d_out == cfg.d_in
            else torch.randn(cfg.d_in, cfg.d_sae, generator=gen) / math.sqrt(cfg.d_in)
        )
        self.W_enc = nn.Parameter(w_enc.to(device=device, dtype=dtype).contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, device=device, dtype=dtype))
        self.W_dec = nn.Parameter(w_dec.to(device=device, dtype=dtype).contiguous())
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, device=device, dtype=dtype))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, device=device, dtype=dtype))
        self.norm_scaling_factor: float | None = None
        """For ``normalize_activations="expected_average_only_in"``: the input is multiplied by it (set it with
        :meth:`set_norm_scaling_factor`, or fold it into the weights: :meth:`fold_activation_norm_scaling_factor`)."""
        for name in HOOK_NAMES:
            setattr(self, name, HookPoint())
        self.setup()

    # -- the surface --------------------------------------------------------------------------------
    @property
    def hook_name(self) -> str:
        return self.cfg.hook_name

    @property
    def hook_name_out(self) -> str | None:
        return self.cfg.hook_name_out

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        return self.cfg.d_out

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def extra_repr(self) -> str:
        c = self.cfg
        out = f", hook_name_out={c.hook_name_out!r}, d_out={c.d_out}" if c.hook_name_out else ""
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, hook_name={c.hook_name!r}{out}"

    # -- normalisation ------------------------------------------------------------------------------
    def set_norm_scaling_factor(self, activations: Tensor) -> float:
        """Set :attr:`norm_scaling_factor` to ``sqrt(d_in) / mean(||x||)`` over ``activations [..., d_in]``
        (SAELens's estimate) and return it."""
        norms = activations.detach().float().reshape(-1, activations.shape[-1]).norm(dim=-1)
        self.norm_scaling_factor = float(math.sqrt(self.cfg.d_in) / norms.mean().item())
        return self.norm_scaling_factor

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float | None = None) -> None:
        """Fold the input scaling into the weights (SAELens): ``W_enc *= s``, ``W_dec /= s``, ``b_dec /= s``;
        then ``normalize_activations = "none"`` (the same function, no runtime scaling)."""
        s = self.norm_scaling_factor if scaling_factor is None else float(scaling_factor)
        if s is None:
            raise ValueError("fold_activation_norm_scaling_factor: no scaling factor given and none set")
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)
        self.cfg = self.cfg.replace(normalize_activations="none")
        self.norm_scaling_factor = None

    def _norm_in(self, x: Tensor) -> tuple[Tensor, Any]:
        mode = self.cfg.normalize_activations
        if mode == "none":
            return x, None
        if mode == "expected_average_only_in":
            if self.norm_scaling_factor is None:
                raise ValueError(
                    "this SAE has normalize_activations='expected_average_only_in' but no norm_scaling_factor; "
                    "set sae.norm_scaling_factor (or call sae.set_norm_scaling_factor(activations))"
                )
            return x * self.norm_scaling_factor, self.norm_scaling_factor
        if mode == "constant_norm_rescale":
            coeff = math.sqrt(self.cfg.d_in) / x.norm(dim=-1, keepdim=True)
            return x * coeff, coeff
        # layer_norm, as SAELens: (x - mean) / (std + eps), std unbiased
        mu = x.mean(dim=-1, keepdim=True)
        centred = x - mu
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + 1e-5), (mu, std)

    def _norm_out(self, y: Tensor, state: Any) -> Tensor:
        mode = self.cfg.normalize_activations
        if mode == "none":
            return y
        if mode == "layer_norm":
            mu, std = state
            return y * std + mu
        return y / state

    # -- the math ------------------------------------------------------------------------------------
    def flatten_input(self, x: Tensor) -> Tensor:
        """``x`` as the SAE reads it: a ``reshape_activations="hook_z"`` SAE's ``[..., n_heads, d_head]`` input
        flattened to ``[..., d_in]`` (a flat input is kept); any other SAE's input unchanged.

        >>> sae.flatten_input(torch.zeros(2, 5, 4, 16)).shape     # hook_z SAE, d_in = 4 * 16  # doctest: +SKIP
        torch.Size([2, 5, 64])
        """
        if self.cfg.reshape_activations != "hook_z" or (x.shape[-1] == self.cfg.d_in and x.ndim >= 1):
            return x
        if x.ndim < 2 or x.shape[-2] * x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"a reshape_activations='hook_z' SAE reads [..., n_heads, d_head] with n_heads * d_head == "
                f"d_in={self.cfg.d_in}, got shape {tuple(x.shape)}"
            )
        return x.flatten(-2)

    def _encode(self, x: Tensor, hooked: bool) -> tuple[Tensor, Any]:
        x = self.flatten_input(x)
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"SAE input has width {x.shape[-1]} (shape {tuple(x.shape)}), but d_in={self.cfg.d_in}")
        hp = (lambda h, t: getattr(self, h)(t)) if hooked else (lambda h, t: t)
        x = hp("hook_sae_input", x.to(self.W_enc.dtype))
        x, state = self._norm_in(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = hp("hook_sae_acts_pre", x @ self.W_enc + self.b_enc)
        arch = self.cfg.architecture
        if arch == "standard":
            acts = torch.relu(pre)
        elif arch == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        else:  # jumprelu
            acts = torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        return hp("hook_sae_acts_post", acts), state

    def _decode(self, acts: Tensor, state: Any, hooked: bool) -> Tensor:
        recons = acts @ self.W_dec + self.b_dec
        if hooked:
            recons = self.hook_sae_recons(recons)
        return self._norm_out(recons, state)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations ``[..., d_sae]`` of ``x [..., d_in]`` (fires the input, pre and post hooks)."""
        return self._encode(x, True)[0]

    def decode(self, feature_acts: Tensor, x: Tensor | None = None) -> Tensor:
        """The reconstruction ``[..., d_out]`` of ``feature_acts`` (fires ``hook_sae_recons``).

        With per-input normalisation (``constant_norm_rescale``, ``layer_norm``) the un-normalisation needs the
        input: pass ``x`` (``forward`` does); with ``"none"`` / ``"expected_average_only_in"`` it is not needed.
        """
        state = None
        mode = self.cfg.normalize_activations
        if mode in ("constant_norm_rescale", "layer_norm"):
            if x is None:
                raise ValueError(f"decode: normalize_activations={mode!r} needs the input: decode(feature_acts, x)")
            state = self._norm_in(self.flatten_input(x).to(self.W_enc.dtype))[1]
        elif mode == "expected_average_only_in":
            state = self._norm_in(feature_acts.new_zeros(1, self.cfg.d_in))[1]
        return self._decode(feature_acts, state, True)

    def forward_parts(self, x: Tensor, use_error_term: bool | None = None) -> Tensor:
        """The hooked forward: the output (``hook_sae_output``), with the error term when asked."""
        use_error = self.use_error_term if use_error_term is None else use_error_term
        shape, x = x.shape, self.flatten_input(x)
        acts, state = self._encode(x, True)
        out = self._decode(acts, state, True)
        if use_error:
            with torch.no_grad():  # SAELens: the error of the unhooked SAE, so edited features change the output
                a, s = self._encode(x, False)
                clean = self._decode(a, s, False)
                error = self.hook_sae_error(x.to(clean.dtype) - clean)
            out = out + error
        out = self.hook_sae_output(out)
        return out.reshape(shape) if self.cfg.reshape_activations == "hook_z" else out

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x`` (plus ``x - reconstruction`` when ``use_error_term``)."""
        return self.forward_parts(x)

    def reconstruct(self, x: Tensor) -> Tensor:
        """The plain reconstruction, no hooks fired (what the SAE would write, for oracles and metrics)."""
        acts, state = self._encode(x, False)
        out = self._decode(acts, state, False)
        return out.reshape(x.shape) if self.cfg.reshape_activations == "hook_z" else out

    def save(self, path: str | os.PathLike) -> Path:
        """Write SAELens's format to directory ``path`` (created): ``cfg.json`` (:meth:`saelens_cfg_dict`) and
        ``sae_weights.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``threshold``). Returns the path.
        ``lens.sae.load(path)`` reads it back."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_FILE))
        (path / CFG_FILE).write_text(json.dumps(self.saelens_cfg_dict(), indent=2))
        return path

    def saelens_cfg_dict(self) -> dict[str, Any]:
        """The cfg.json SAELens reads, in both its layouts: top-level ``hook_name``, ``hook_layer``, ``model_name``,
        ``activation_fn_kwargs`` (SAELens <= 5) and a ``metadata`` object (SAELens 6), plus ``k`` for TopK;
        lens's own extras: ``hook_name_out``, ``d_out``, ``norm_scaling_factor``."""
        c = self.cfg
        meta = dict(c.metadata)
        layer = _layer_of(c.hook_name)
        meta.setdefault("hook_name", c.hook_name)
        if layer is not None:
            meta.setdefault("hook_layer", layer)
        out: dict[str, Any] = {
            "architecture": c.architecture,
            "d_in": c.d_in,
            "d_sae": c.d_sae,
            "dtype": c.dtype,
            "device": c.device,
            "apply_b_dec_to_input": c.apply_b_dec_to_input,
            "normalize_activations": c.normalize_activations,
            "reshape_activations": c.reshape_activations,
            "hook_name": c.hook_name,
            "hook_layer": layer if layer is not None else -1,
            "hook_head_index": None,
            "model_name": meta.get("model_name"),
            "activation_fn_str": "topk" if c.architecture == "topk" else "relu",
            "activation_fn_kwargs": {"k": c.k} if c.architecture == "topk" else {},
            "metadata": meta,
        }
        if c.architecture == "topk":
            out["k"] = c.k
        if c.hook_name_out is not None:
            out["hook_name_out"] = c.hook_name_out
            out["d_out"] = c.d_out
        if self.norm_scaling_factor is not None:
            out["norm_scaling_factor"] = self.norm_scaling_factor
        return out


CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"


def _layer_of(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit() else None
