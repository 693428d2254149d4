"""Attaching SAEs to a hooked model: ``model.add_sae``, ``model.reset_saes``, ``with model.saes([...])``.

An attached SAE replaces the activation at its ``hook_name`` by its output (``hook_sae_output``): the
reconstruction, or with ``use_error_term=True`` the reconstruction plus ``x - reconstruction`` (computed by the
unhooked SAE without gradient, as SAELens), so the model computes what it computed before, to float rounding,
while feature edits through hooks still change the output. A transcoder (``cfg.hook_name_out`` set) reads at
``hook_name`` and replaces the activation at ``hook_name_out`` (its error term: the activation there minus the
reconstruction).

How: the SAE's own hook points become children of the model's hook point at ``hook_name`` (so ``setup()``
names them ``{hook_name}.hook_sae_input`` ... ``.hook_sae_output`` and ``run_with_cache`` / ``run_with_hooks`` /
``model.hooks`` / generation see them), and the SAE runs in a permanent hook on that hook point, first in its
list. Hooks on ``hook_name`` itself therefore see the SAE's output (what flows on); ``hook_sae_input`` holds
the model's activation. The SAE's parameters are not registered in the model (``model.state_dict()`` and
``model.parameters()`` are unchanged), and nothing about the model changes on detach.
``model.reset_hooks(including_permanent=True)`` also removes the SAE's hook: call ``reset_saes()`` with it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from lens.sae.modules import HOOK_NAMES, SAE

# hook name suffix -> which width of model.cfg it has (checked before attaching)
_D_MODEL = (
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_embed",
    "hook_pos_embed", "hook_mlp_in", "hook_attn_in", "hook_normalized",
)  # fmt: skip
_D_MLP = ("mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear")


def _expected_width(model: Any, name: str, reshape: str = "none") -> tuple[int, str] | None:
    cfg = model.cfg
    if reshape == "hook_z" and name.endswith("attn.hook_z"):
        n_heads = cfg.n_heads
        return n_heads * cfg.d_head, f"n_heads * d_head = {n_heads} * {cfg.d_head}, the heads flattened"
    if name.endswith(_D_MLP) and getattr(cfg, "num_experts", None) is None:
        return cfg.d_mlp, "d_mlp"
    if name.endswith(("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v")):
        return cfg.d_head, "d_head (the activation is [batch, pos, head, d_head])"
    if name.endswith(_D_MODEL) and not name.endswith(("q_norm.hook_normalized", "k_norm.hook_normalized")):
        return cfg.d_model, "d_model"
    return None


class _Attachment:
    """One SAE attached to one model: its hooks, and the transcoder's per-thread stash."""

    def __init__(self, model: Any, sae: SAE, use_error_term: bool):
        self.model, self.sae, self.use_error_term = model, sae, use_error_term
        self.site = model.hook_dict[sae.cfg.hook_name]
        self.out_site = model.hook_dict[sae.cfg.hook_name_out] if sae.cfg.hook_name_out else None
        self.handles: list[Any] = []
        self.stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- the hooks --------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, name: str, width: int) -> None:
        if self.sae.cfg.reshape_activations == "hook_z" and x.ndim >= 2:
            x = x.flatten(-2)
        if x.shape[-1] != width:
            raise ValueError(
                f"SAE {self.sae.cfg.hook_name!r} expects width {width} at {name!r}, but the activation there has "
                f"shape {tuple(x.shape)}"
            )

    def replace(self, x: torch.Tensor, hook: Any) -> torch.Tensor:
        sae = self.sae
        self._check(x, hook.name, sae.d_in)
        out = sae.forward_parts(x, use_error_term=self.use_error_term)
        return out.to(x.dtype)

    def read(self, x: torch.Tensor, hook: Any) -> None:
        sae = self.sae
        self._check(x, hook.name, sae.d_in)
        acts, state = sae._encode(x, True)
        recons = sae._decode(acts, state, True)
        clean = None
        if self.use_error_term:
            with torch.no_grad():
                a, s = sae._encode(x, False)
                clean = sae._decode(a, s, False)
        self.stash[threading.get_ident()] = (recons, clean)

    def write(self, y: torch.Tensor, hook: Any) -> torch.Tensor:
        sae = self.sae
        self._check(y, hook.name, sae.d_out)
        got = self.stash.pop(threading.get_ident(), None)
        if got is None:
            raise RuntimeError(
                f"transcoder {sae.cfg.hook_name!r} -> {sae.cfg.hook_name_out!r}: {hook.name!r} fired before "
                f"{sae.cfg.hook_name!r} in this forward (hook_name must come first)"
            )
        recons, clean = got
        if recons.shape != y.shape:  # a hook_z SAE's flat output, back to [..., n_heads, d_head]
            recons = recons.reshape(y.shape)
            clean = clean.reshape(y.shape) if clean is not None else None
        out = recons
        if clean is not None:
            with torch.no_grad():
                error = sae.hook_sae_error(y.to(clean.dtype) - clean)
            out = out + error
        return sae.hook_sae_output(out).to(y.dtype)

    # -- attach / detach --------------------------------------------------------------------------
    def attach(self) -> None:
        for name in HOOK_NAMES:
            self.site.add_module(name, getattr(self.sae, name))
        if self.out_site is None:
            self.handles.append(self.site.add_hook(self.replace, is_permanent=True, prepend=True))
        else:
            self.handles.append(self.site.add_hook(self.read, is_permanent=True, prepend=True))
            self.handles.append(self.out_site.add_hook(self.write, is_permanent=True, prepend=True))
        self.model.setup()

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.stash.clear()
        for name in HOOK_NAMES:
            if self.site._modules.get(name) is getattr(self.sae, name):
                del self.site._modules[name]
        self.model.setup()
        self.sae.setup()  # its hook points get their own names back


class SAEAttachMixin:
    """``add_sae`` / ``reset_saes`` / ``saes`` for a :class:`lens.hooks.HookedRootModule` with a ``cfg``."""

    @property
    def acts_to_saes(self) -> dict[str, SAE]:
        """The attached SAEs by ``hook_name`` (SAELens's name)."""
        return {a.sae.cfg.hook_name: a.sae for a in self.__dict__.get("_sae_attachments", [])}

    def _check_sae(self, sae: Any) -> None:
        if not isinstance(sae, SAE):
            raise TypeError(f"add_sae needs a lens.sae.SAE, got {type(sae).__name__}")
        cfg = sae.cfg
        taken = {a.sae.cfg.hook_name for a in self.__dict__.get("_sae_attachments", [])}
        for name, width, what in ((cfg.hook_name, cfg.d_in, "d_in"), (cfg.hook_name_out, cfg.d_out, "d_out")):
            if name is None:
                continue
            if name not in self.hook_dict:
                near = [n for n in self.hook_dict if n.split(".")[-1] == name.split(".")[-1]][:5]
                raise ValueError(
                    f"SAE hook {name!r} is not a hook of this model ({self.cfg.n_layers} layers); "
                    f"hooks with that suffix: {near or 'none'}"
                )
            if ".hook_sae_" in name:
                raise ValueError(f"SAE hook {name!r} is inside another SAE; attach SAEs to the model's own hooks")
            expected = _expected_width(self, name, cfg.reshape_activations)
            if expected is not None and expected[0] != width:
                raise ValueError(
                    f"SAE {what}={width} does not match hook {name!r}, whose activation has width {expected[0]} "
                    f"({expected[1]} of this model)"
                )
        if cfg.hook_name in taken:
            raise ValueError(f"an SAE is already attached at {cfg.hook_name!r}; reset_saes() first")
        if cfg.hook_name_out is not None and cfg.hook_name_out in taken:
            raise ValueError(f"an SAE is already attached at {cfg.hook_name_out!r}; reset_saes() first")

    def add_sae(self, sae: SAE, use_error_term: bool = False) -> SAE:
        """Attach ``sae`` at ``sae.cfg.hook_name``: the activation there is replaced by the SAE's output, and
        ``{hook_name}.hook_sae_*`` become hook points of the model (see :mod:`lens.sae.attach`). Returns ``sae``.

        ValueError before any change: a hook the model lacks, a width that does not match the hook's
        (``d_in``; ``d_out`` at a transcoder's ``hook_name_out``), a hook that already has an SAE.
        """
        if not isinstance(use_error_term, bool):
            raise TypeError(f"use_error_term must be a bool, got {type(use_error_term).__name__}")
        self._check_sae(sae)
        attachment = _Attachment(self, sae, use_error_term)
        attachment.attach()
        self.__dict__.setdefault("_sae_attachments", []).append(attachment)
        return sae

    def reset_saes(self, hook_names: Sequence[str] | None = None) -> None:
        """Detach the SAEs (those at ``hook_names`` when given), last attached first; the model is as before."""
        kept = []
        for a in reversed(self.__dict__.get("_sae_attachments", [])):
            if hook_names is None or a.sae.cfg.hook_name in hook_names:
                a.detach()
            else:
                kept.append(a)
        self.__dict__["_sae_attachments"] = list(reversed(kept))

    @contextmanager
    def saes(self, saes: Sequence[SAE] = (), use_error_term: bool = False) -> Iterator[Any]:
        """Attach ``saes`` for the body of a ``with`` block; they are detached on exit, also when it raises.

        >>> with model.saes([sae]):
        ...     logits, cache = model.run_with_cache(tokens)
        """
        if isinstance(saes, SAE):
            saes = [saes]
        added: list[str] = []
        try:
            for sae in saes:
                self.add_sae(sae, use_error_term=use_error_term)
                added.append(sae.cfg.hook_name)
            yield self
        finally:
            if added:
                self.reset_saes(added)
