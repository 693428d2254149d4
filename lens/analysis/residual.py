"""Residual-stream analysis on an :class:`lens.ActivationCache` (TransformerLens names and semantics).

Why: direct logit attribution, the logit lens and "which component wrote this direction" questions
all start by splitting the residual stream into the pieces that were added to it. These methods stack
those pieces (``[component, *batch_and_pos, d_model]``) and optionally push them through a norm so
they can be compared with, or projected onto, what the next layer / the unembedding reads.

- :meth:`accumulated_resid`: the residual stream after each layer (``"0_pre"`` ... ``"final_post"``).
- :meth:`decompose_resid`: embed, pos_embed, and every attn_out / mlp_out (sums to the residual).
- :meth:`stack_head_results`: per-head outputs ``z @ W_O`` (``"L0H0"`` ...); with ``b_O`` they sum to
  ``attn_out``. Computed from ``hook_z`` when ``hook_result`` was not cached.
- :meth:`stack_neuron_results`: per-neuron outputs ``post * W_out``; with ``b_out`` they sum to ``mlp_out``.
- :meth:`get_full_resid_decomposition`: heads + neurons (or MLP layers) + embeds + one ``"bias"``
  term; sums exactly to the residual stream entering ``layer``.
- :meth:`apply_ln_to_stack`, :meth:`logit_attrs`, :meth:`logit_offset`.

**Norms in lens.** ``hook_normalized`` is the norm's full output (including weight and bias) and
``hook_scale`` is ``[..., 1]``. :meth:`apply_ln_to_stack` therefore applies the *linear part* of the
norm with the cached (frozen) scale: centre (LayerNorm only), divide by the scale, multiply by the
weight. The norm's bias is not attributable to any component and is **not** added; it is one constant
term. Hence, for a full decomposition (no ``fold_ln`` needed):

``cache.logit_attrs(stack, tok, inc).sum(0) + cache.logit_offset(tok, inc) == logit[tok] - logit[inc]``

where :meth:`logit_offset` is ``ln_final.b @ (W_U[:, tok] - W_U[:, inc]) + b_U[tok] - b_U[inc]``.
Models without a norm skip the norm step; RMSNorm has no centring and no bias.

Slices (``pos_slice``, ``batch_slice``, ``neuron_slice``) are TransformerLens's :class:`lens.utils.Slice`
(or anything it takes): None (all), an int (that index; the dimension is dropped), a tuple
(``slice(*tuple)``: ``(k,)`` is ``[:k]``, ``(a, b)`` is ``[a:b]``), a ``slice``, or a list / range /
tensor / array of indices. Out-of-range ints and indices raise IndexError.

>>> logits, cache = model.run_with_cache(tokens)
>>> stack, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)   # [comp, batch, d_model]
>>> attrs = cache.logit_attrs(stack, tokens=answer, incorrect_tokens=wrong, pos_slice=-1)
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens.utilities.slicing import Slice, SliceInput, apply_slice

__all__ = ["ActivationCacheAnalysisMixin", "apply_slice"]

SliceLike = Slice | SliceInput  # what every pos_slice= / batch_slice= / neuron_slice= takes


class ActivationCacheAnalysisMixin:
    """Analysis methods for :class:`lens.ActivationCache` (see the module docs for conventions)."""

    cache_dict: dict[str, Tensor]
    model: Any
    has_batch_dim: bool

    # -- small helpers ------------------------------------------------------------------------------
    @property
    def _cfg(self):
        if self.model is None or not hasattr(self.model, "cfg"):
            raise ValueError("this analysis needs the cache's model (cache.model is None)")
        return self.model.cfg

    @property
    def has_embed(self) -> bool:
        return "hook_embed" in self.cache_dict

    @property
    def has_pos_embed(self) -> bool:
        return "hook_pos_embed" in self.cache_dict

    def _layer_arg(self, layer: int | None, name: str = "layer") -> int:
        """None / -1 -> n_layers (the unembed input); otherwise an int in [0, n_layers]."""
        n = self._cfg.n_layers
        if layer is None or (isinstance(layer, int) and not isinstance(layer, bool) and layer == -1):
            return n
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
            raise ValueError(f"{name}={layer!r} must be an int in [0, n_layers={n}] (or None / -1 for n_layers)")
        return layer

    def _get(self, key: Any) -> Tensor:
        return self[key]  # ActivationCache.__getitem__: clear errors for missing / uncached hooks

    def _resid_template(self, pos_slice: SliceLike) -> Tensor:
        pos_slice = Slice(pos_slice)
        for key in ("hook_embed", "blocks.0.hook_resid_pre", f"blocks.{self._cfg.n_layers - 1}.hook_resid_post"):
            if key in self.cache_dict:
                return apply_slice(self.cache_dict[key], pos_slice, -2)
        raise ValueError("the cache holds no residual-stream activation (hook_embed / resid_pre) to size the stack")

    def _empty_stack(self, pos_slice: SliceLike) -> Tensor:
        t = self._resid_template(pos_slice)
        return t.new_zeros((0, *t.shape))

    # -- norms --------------------------------------------------------------------------------------
    def _norm_site(self, layer: int, mlp_input: bool) -> tuple[Any, str, str]:
        """(norm module or None, its hook_scale key, the key of the residual it normalises)."""
        cfg = self._cfg
        n = cfg.n_layers
        if layer == n:
            if mlp_input:
                raise ValueError("mlp_input=True needs layer < n_layers (the unembed has no MLP)")
            return self.model.ln_final, "ln_final.hook_scale", f"blocks.{n - 1}.hook_resid_post"
        block = self.model.blocks[layer]
        if mlp_input:
            if cfg.attn_only:
                raise ValueError("mlp_input=True, but this model is attn_only (no MLP)")
            src = "resid_pre" if cfg.parallel_attn_mlp else "resid_mid"
            return block.ln2, f"blocks.{layer}.ln2.hook_scale", f"blocks.{layer}.hook_{src}"
        return block.ln1, f"blocks.{layer}.ln1.hook_scale", f"blocks.{layer}.hook_resid_pre"

    def _ln_scale(
        self, layer: int, mlp_input: bool, pos_slice: SliceLike, batch_slice: SliceLike
    ) -> Float[Tensor, "*batch_and_pos 1"]:
        norm, scale_key, input_key = self._norm_site(layer, mlp_input)
        resid_ndim = 3 if self.has_batch_dim else 2
        if scale_key in self.cache_dict:
            scale = self.cache_dict[scale_key]
            if scale.ndim == resid_ndim + 1:  # per-head norm inputs (use_attn_in / use_split_qkv_input)
                scale = scale[..., 0, :]
        elif input_key in self.cache_dict:
            x = self.cache_dict[input_key].float()
            if norm.centered:
                x = x - x.mean(-1, keepdim=True)
            scale = (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        else:
            raise ValueError(
                f"applying the norm needs {scale_key!r} (or {input_key!r} to recompute it) in the cache; "
                "run run_with_cache with a names_filter that keeps it"
            )
        scale = apply_slice(scale, pos_slice, -2)
        if batch_slice is not None and self.has_batch_dim:
            scale = apply_slice(scale, batch_slice, 0)
        return scale

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: SliceLike = None,
        batch_slice: SliceLike = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "component *batch_and_pos d_model"]:
        """Push each stacked component through the norm that reads layer ``layer``'s input.

        ``layer`` in ``[0, n_layers]`` picks ``blocks[layer].ln1`` (``ln2`` with ``mlp_input``);
        ``n_layers`` / None / -1 picks ``ln_final``. With the cached scale (default) the map is linear:
        ``(x - mean(x)) / scale * w`` (no centring for RMSNorm) and the norm bias is left out, so the
        normalised components still sum to the norm's output minus its bias. ``recompute_ln=True``
        instead runs the norm module on every component on its own (statistics from that component,
        bias included): right for full residual streams (logit lens), wrong for a decomposition.
        ``pos_slice`` / ``batch_slice`` must be the slices already applied to the stack (they select
        the matching scales). Models without a norm return the stack unchanged.

        >>> normed = cache.apply_ln_to_stack(cache.decompose_resid(), layer=None)
        """
        layer = self._layer_arg(layer)
        norm, _, _ = self._norm_site(layer, mlp_input)
        if norm is None:
            return residual_stack
        if has_batch_dim and batch_slice is not None:
            residual_stack = apply_slice(residual_stack, batch_slice, 1)
        if recompute_ln:
            return norm(residual_stack)
        x = residual_stack
        if norm.centered:
            x = x - x.mean(-1, keepdim=True)
        scale = self._ln_scale(layer, mlp_input, pos_slice, batch_slice if has_batch_dim else None)
        return (x / scale).to(residual_stack.dtype) * norm.w

    # -- stacks of the residual stream --------------------------------------------------------------
    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The residual stream as it stood before each layer: ``resid_pre`` of layers ``0..layer``.

        ``layer=None`` (or ``n_layers``, -1) adds the final stream ``"final_post"``. ``incl_mid`` adds
        ``resid_mid`` of the earlier layers, ``mlp_input`` that of ``layer`` (blocks without a
        ``resid_mid`` - parallel attn+MLP or attn_only - contribute none). ``apply_ln`` normalises for
        ``layer``'s input: with the final norm, each stream is normalised on its own (logit lens);
        otherwise with the cached scale. Labels: ``"0_pre"``, ``"0_mid"``, ..., ``"final_post"``.

        >>> resid, labels = cache.accumulated_resid(pos_slice=-1, return_labels=True)  # [n_layers+1, batch, d]
        """
        cfg = self._cfg
        layer = self._layer_arg(layer)
        if mlp_input and cfg.attn_only:
            raise ValueError("mlp_input=True, but this model is attn_only (no MLP)")
        has_mid = not cfg.attn_only and not cfg.parallel_attn_mlp
        comps, labels = [], []
        for i in range(layer + 1):
            if i == cfg.n_layers:
                comps.append(self._get(("resid_post", cfg.n_layers - 1)))
                labels.append("final_post")
                continue
            comps.append(self._get(("resid_pre", i)))
            labels.append(f"{i}_pre")
            if has_mid and ((incl_mid and i < layer) or (mlp_input and i == layer)):
                comps.append(self._get(("resid_mid", i)))
                labels.append(f"{i}_mid")
        stack = torch.stack([apply_slice(c, pos_slice, -2) for c in comps], dim=0)
        if apply_ln:
            recompute = layer == cfg.n_layers
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice, recompute_ln=recompute)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Split the residual stream entering ``layer`` into embed, pos_embed, attn_out and mlp_out.

        The components (``"embed"``, ``"pos_embed"`` for learned positions, ``"{l}_attn_out"``,
        ``"{l}_mlp_out"`` for ``l < layer``, plus ``"{layer}_attn_out"`` with ``mlp_input``) sum
        exactly to ``resid_pre`` of ``layer`` (``resid_post`` of the last layer for None); output
        biases are inside attn_out / mlp_out. ``mode``: ``"all"``, ``"attn"`` or ``"mlp"``.

        >>> stack = cache.decompose_resid()            # [1 + 1 + 2 * n_layers, batch, pos, d_model]
        >>> torch.allclose(stack.sum(0), cache["resid_post", -1], atol=1e-5)
        True
        """
        cfg = self._cfg
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode={mode!r} must be 'all', 'attn' or 'mlp'")
        layer = self._layer_arg(layer)
        if mlp_input and (layer == cfg.n_layers or cfg.attn_only):
            raise ValueError("mlp_input=True needs layer < n_layers and a model with MLPs")
        incl_attn, incl_mlp = mode != "mlp", mode != "attn" and not cfg.attn_only
        comps, labels = [], []
        if incl_embeds:
            if self.has_embed:
                comps.append(self._get("hook_embed"))
                labels.append("embed")
            if self.has_pos_embed:
                comps.append(self._get("hook_pos_embed"))
                labels.append("pos_embed")
        for i in range(layer):
            if incl_attn:
                comps.append(self._get(("attn_out", i)))
                labels.append(f"{i}_attn_out")
            if incl_mlp:
                comps.append(self._get(("mlp_out", i)))
                labels.append(f"{i}_mlp_out")
        if mlp_input and incl_attn and not cfg.parallel_attn_mlp:
            comps.append(self._get(("attn_out", layer)))
            labels.append(f"{layer}_attn_out")
        if comps:
            stack = torch.stack([apply_slice(c, pos_slice, -2) for c in comps], dim=0)
        else:
            stack = self._empty_stack(pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    # -- heads ----------------------------------------------------------------------------------------
    def _head_results(self, layer: int) -> Float[Tensor, "*batch pos head d_model"]:
        key = f"blocks.{layer}.attn.hook_result"
        if key in self.cache_dict:
            return self.cache_dict[key]
        z = self._get(("z", layer))
        w_o = self.model.blocks[layer].attn.W_O
        dtype = torch.promote_types(z.dtype, w_o.dtype)
        return torch.einsum("...hk,hkd->...hd", z.to(dtype), w_o.to(dtype))

    def compute_head_results(self) -> None:
        """Store ``blocks.{l}.attn.hook_result`` (``z @ W_O`` per head) for every layer not cached yet."""
        for layer in range(self._cfg.n_layers):
            key = f"blocks.{layer}.attn.hook_result"
            if key not in self.cache_dict:
                self.cache_dict[key] = self._head_results(layer)

    def stack_head_results(
        self,
        layer: int | None = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: SliceLike = None,
        apply_ln: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Each head's write to the residual stream, for the heads of layers ``< layer``.

        Shape ``[layer * n_heads, *batch_and_pos, d_model]``, labels ``"L{l}H{h}"`` (layer-major).
        Uses ``hook_result`` when cached, else ``hook_z @ W_O`` (GQA needs nothing special: z has
        n_heads). ``sum over the heads of layer l + b_O[l] == attn_out[l]``. ``incl_remainder`` adds
        ``"remainder"`` = ``resid_post`` of layer ``layer - 1`` (TransformerLens's definition; ``resid_pre``
        of layer 0 for ``layer=0``) minus the sum of the heads, so heads + remainder sum exactly to it.

        >>> heads, labels = cache.stack_head_results(layer=1, pos_slice=-1, return_labels=True)
        """
        cfg = self._cfg
        layer = self._layer_arg(layer)
        comps = [apply_slice(self._head_results(i), pos_slice, -3) for i in range(layer)]
        labels = [f"L{i}H{h}" for i in range(layer) for h in range(cfg.n_heads)]
        stack = torch.cat(comps, dim=-2).movedim(-2, 0) if comps else self._empty_stack(pos_slice)
        if incl_remainder:
            stack = self._with_remainder(stack, layer, pos_slice)
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _with_remainder(self, stack: Tensor, layer: int, pos_slice: SliceLike) -> Tensor:
        """Append ``resid_post[layer - 1]`` (``resid_pre[0]`` for layer 0) minus the stack's sum."""
        target = self._get(("resid_post", layer - 1)) if layer > 0 else self._get(("resid_pre", 0))
        target = apply_slice(target, pos_slice, -2)
        remainder = target - stack.sum(0) if stack.shape[0] else target
        return torch.cat([stack, remainder[None]], dim=0)

    # -- neurons --------------------------------------------------------------------------------------
    def get_neuron_results(
        self, layer: int, neuron_slice: SliceLike = None, pos_slice: SliceLike = None
    ) -> Float[Tensor, "*batch_and_pos neuron d_model"]:
        """Each neuron's write ``post[n] * W_out[n]`` in ``layer`` (not cached: cheap to recompute).

        An int ``neuron_slice`` drops the neuron dimension (``[*batch_and_pos, d_model]``), as in
        TransformerLens.

        >>> cache.get_neuron_results(0, neuron_slice=[3, 7], pos_slice=-1).shape   # [batch, 2, d_model]
        """
        if self._cfg.attn_only:
            raise ValueError("this model is attn_only: it has no neurons")
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self._cfg.n_layers:
            raise ValueError(f"layer={layer!r} must be an int in [0, n_layers={self._cfg.n_layers})")
        neuron_slice = Slice(neuron_slice)
        post = apply_slice(self._get(("post", layer)), pos_slice, -2)
        w_out = self.model.blocks[layer].mlp.W_out  # [d_mlp, d_model]
        post = apply_slice(post, neuron_slice, -1)
        w_out = apply_slice(w_out, neuron_slice, 0)
        dtype = torch.promote_types(post.dtype, w_out.dtype)
        return post.to(dtype)[..., None] * w_out.to(dtype)

    def stack_neuron_results(
        self,
        layer: int | None = None,
        pos_slice: SliceLike = None,
        neuron_slice: SliceLike = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Every neuron's write for the MLPs of layers ``< layer``: ``[layer * n_neurons, ..., d_model]``.

        Labels ``"L{l}N{n}"``. ``sum over layer l's neurons + b_out[l] == mlp_out[l]``. Memory grows
        as ``d_mlp * d_model`` per position: use ``neuron_slice`` / ``pos_slice`` on large models. An int
        ``neuron_slice`` keeps that one neuron per layer (the component dimension is never dropped).
        ``incl_remainder``: as in :meth:`stack_head_results`.

        >>> neurons = cache.stack_neuron_results(layer=1, pos_slice=-1)
        """
        cfg = self._cfg
        if cfg.attn_only:
            raise ValueError("this model is attn_only: it has no neurons")
        layer = self._layer_arg(layer)
        neuron_slice = Slice.unwrap(neuron_slice)  # an int keeps the neuron dimension
        ids = apply_slice(torch.arange(cfg.d_mlp), neuron_slice, 0).tolist()
        comps = [self.get_neuron_results(i, neuron_slice, pos_slice) for i in range(layer)]
        labels = [f"L{i}N{n}" for i in range(layer) for n in ids]
        stack = torch.cat(comps, dim=-2).movedim(-2, 0) if comps else self._empty_stack(pos_slice)
        if incl_remainder:
            stack = self._with_remainder(stack, layer, pos_slice)
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    # -- full decomposition ---------------------------------------------------------------------------
    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Heads, neurons (or MLP layers), embed, pos_embed and one ``"bias"`` term, summing exactly
        to the residual stream entering ``layer`` (its MLP with ``mlp_input``; None: the unembed).

        Order: ``L{l}H{h}`` heads, then ``L{l}N{n}`` neurons (``expand_neurons``) or ``{l}_mlp_out``,
        then ``embed``, ``pos_embed`` (learned positions only), ``bias`` (the summed ``b_O`` and, when
        neurons are expanded, ``b_out``; broadcast over batch/pos).

        >>> stack, labels = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
        >>> torch.allclose(stack.sum(0), cache["resid_post", -1], atol=1e-5)
        True
        """
        cfg = self._cfg
        layer = self._layer_arg(layer)
        if mlp_input and (layer == cfg.n_layers or cfg.attn_only):
            raise ValueError("mlp_input=True needs layer < n_layers and a model with MLPs")
        head_layer = layer + 1 if mlp_input and not cfg.parallel_attn_mlp else layer
        heads, labels = self.stack_head_results(head_layer, pos_slice=pos_slice, return_labels=True)
        comps = [heads]
        if not cfg.attn_only and layer > 0:
            if expand_neurons:
                mlp, mlp_labels = self.stack_neuron_results(layer, pos_slice=pos_slice, return_labels=True)
            else:
                mlp, mlp_labels = self.decompose_resid(
                    layer, mode="mlp", incl_embeds=False, pos_slice=pos_slice, return_labels=True
                )
            comps.append(mlp)
            labels = labels + mlp_labels
        template = self._resid_template(pos_slice)
        for key, label in (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")):
            if key in self.cache_dict:
                comps.append(apply_slice(self.cache_dict[key], pos_slice, -2)[None])
                labels.append(label)
        bias = self.model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)
        comps.append(bias.to(template.dtype).expand(1, *template.shape))
        labels.append("bias")
        stack = torch.cat(comps, dim=0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int | None = None, sublayer_type: str | None = None):
        """``activation_name`` of layers ``0..layer-1`` stacked on a new first dim (None: all layers).

        >>> cache.stack_activation("pattern").shape   # [n_layers, batch, head, q, k]
        """
        layer = self._layer_arg(layer)
        return torch.stack([self._get((activation_name, i, sublayer_type)) for i in range(layer)], dim=0)

    # -- logit attribution ----------------------------------------------------------------------------
    def _token_ids(self, tokens: Any, name: str) -> Tensor:
        if isinstance(tokens, str):
            tokens = self.model.to_single_token(tokens)
        if isinstance(tokens, bool):
            raise TypeError(f"{name} must be token ids, got a bool")
        return torch.as_tensor(tokens, device=self.model.unembed.weight.device)

    def _logit_directions(self, tokens: Any, incorrect_tokens: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        tok = self._token_ids(tokens, "tokens")
        dirs = self.model.tokens_to_residual_directions(tok)
        inc = None
        if incorrect_tokens is not None:
            inc = self._token_ids(incorrect_tokens, "incorrect_tokens")
            if inc.shape != tok.shape:
                raise ValueError(
                    f"tokens and incorrect_tokens must have the same shape, got {tuple(tok.shape)} "
                    f"and {tuple(inc.shape)}"
                )
            dirs = dirs - self.model.tokens_to_residual_directions(inc)
        return dirs, tok, inc

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
        tokens: int | str | Int[Tensor, "..."],
        incorrect_tokens: int | str | Int[Tensor, "..."] | None = None,
        pos_slice: SliceLike = None,
        batch_slice: SliceLike = None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, "component *batch_and_pos"]:
        """Direct logit attribution: each component's contribution to ``logit[tokens]`` (minus
        ``logit[incorrect_tokens]``), through the final norm with its cached scale.

        Pass the **raw** stack (e.g. :meth:`decompose_resid` without ``apply_ln``): the final norm is
        applied here, as in TransformerLens. ``tokens`` is an id, a string (single token), ``[batch]``
        (one target per example, broadcast over positions) or ``[batch, pos]``, already matching the
        slices applied to the stack. Summing over components and adding :meth:`logit_offset` gives the
        model's logit (difference) exactly.

        >>> stack = cache.decompose_resid(pos_slice=-1)
        >>> cache.logit_attrs(stack, answers, wrong, pos_slice=-1).shape     # [component, batch]
        """
        dirs, _, _ = self._logit_directions(tokens, incorrect_tokens)
        scaled = self.apply_ln_to_stack(
            residual_stack, None, pos_slice=pos_slice, batch_slice=batch_slice, has_batch_dim=has_batch_dim
        )
        dirs = _align_directions(dirs, tuple(scaled.shape[1:-1]))
        return (scaled * dirs.to(scaled.dtype)).sum(-1)

    def logit_offset(
        self,
        tokens: int | str | Int[Tensor, "..."],
        incorrect_tokens: int | str | Int[Tensor, "..."] | None = None,
    ) -> Float[Tensor, "..."]:
        """The part of ``logit[tokens] - logit[incorrect_tokens]`` carried by no residual component:
        the final norm's bias projected on the unembedding plus the unembedding bias, shape of ``tokens``.

        ``logit_attrs(full_decomposition).sum(0) + logit_offset(...)`` equals the model's logits.

        >>> cache.logit_offset(answers, wrong).shape    # [batch]
        """
        dirs, tok, inc = self._logit_directions(tokens, incorrect_tokens)
        b_u = self.model.unembed.b_U
        offset = b_u[tok] if inc is None else b_u[tok] - b_u[inc]
        norm = self.model.ln_final
        bias = getattr(norm, "b", None) if norm is not None else None
        if bias is not None:
            offset = offset + dirs @ bias
        return offset


def _align_directions(dirs: Tensor, rest: tuple[int, ...]) -> Tensor:
    """Line ``dirs [*tok, d]`` up with a stack's ``[*rest, d]`` dims from the left (tok dims lead)."""
    k = dirs.ndim - 1
    if k == 0:
        return dirs
    if k > len(rest) or any(a != b and a != 1 for a, b in zip(dirs.shape[:-1], rest)):
        raise ValueError(
            f"tokens of shape {tuple(dirs.shape[:-1])} do not match the stack's batch/pos dims {rest}; "
            "pass one token, [batch] or [batch, pos] matching any pos_slice / batch_slice"
        )
    return dirs.reshape(*dirs.shape[:-1], *([1] * (len(rest) - k)), dirs.shape[-1])
