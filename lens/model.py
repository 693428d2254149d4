"""`HookedTransformer`: a decoder-only transformer with a named hook at every activation.

Names and shapes follow TransformerLens (``hook_embed``, ``blocks.3.attn.hook_pattern``,
``blocks.3.mlp.hook_post``, ``ln_final.hook_normalized``, ...); logits equal Hugging Face's for the
same weights (``lens.families`` map them, ``lens.loading`` converts).
Masks are built per forward for the positions in use
and attention takes the fused SDPA path whenever no hook watches its scores or pattern.

>>> cfg = TransformerConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=259, n_ctx=128)
>>> model = HookedTransformer(cfg)
>>> logits, cache = model.run_with_cache(torch.tensor([[256, 72, 105]]))
>>> cache["pattern", 0].shape
torch.Size([1, 4, 3, 3])
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lens import generation, provenance
from lens.analysis.cache import ActivationCache
from lens.components import AttentionContext, Embed, PosEmbed, Rotary, TransformerBlock, Unembed, make_norm
from lens.components.hook_flags import HookFlagsMixin
from lens.config import TransformerConfig
from lens.generation import GenerationConfig
from lens.hooks import HookedRootModule, HookPoint
from lens.sae.attach import SAEAttachMixin
from lens.tl_methods import TransformerLensMethodsMixin
from lens.tokenizer import Tokenizer, TokenizerMixin
from lens.utils import lm_cross_entropy_loss
from lens.weights import WeightsMixin

RETURN_TYPES = ("logits", "loss", "both", None)


class HookedTransformer(
    HookFlagsMixin, HookedRootModule, TokenizerMixin, WeightsMixin, TransformerLensMethodsMixin, SAEAttachMixin
):
    """A hooked decoder-only transformer described by a :class:`TransformerConfig`.

    Args:
        cfg: the architecture (a ``TransformerConfig`` or a dict of its fields).
        tokenizer: a :class:`lens.tokenizer.Tokenizer` or a ``transformers`` fast tokenizer (converted with
            ``Tokenizer.from_hf``; optional, needed for string inputs).
        init: initialise weights randomly (GPT-2 style, seeded by ``seed``); loaders pass False.
    """

    cache_class = ActivationCache  # run_with_cache returns one (cache analysis: lens.analysis)

    def __init__(
        self,
        cfg: TransformerConfig | dict,
        tokenizer: Tokenizer | Any | None = None,
        init: bool = True,
        seed: int | None = None,
    ):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = TransformerConfig(**cfg)
        if not isinstance(cfg, TransformerConfig):
            raise TypeError(f"cfg must be a TransformerConfig or dict, got {type(cfg).__name__}")
        self.cfg = cfg
        self.placement = None  # a lens.placement.Placement when from_pretrained(device_map=...) spread the model
        self.tokenizer = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        if cfg.positional == "learned":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()
        if cfg.positional == "rotary":
            self.rotary = Rotary(cfg)
            if cfg.rotary_base_local is not None:  # local layers: their own base, no scaling (Gemma 3)
                self.rotary_local = Rotary(cfg.replace(rotary_base=cfg.rotary_base_local, rope_scaling=None))
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = make_norm(cfg)
        self.unembed = Unembed(cfg)
        self.tie_weights()
        if init:
            self.init_weights(seed)
        self.sync_hooks()  # optional hook points (hook_tokens, set_use_* flags), then setup() names them all
        # how the model was made (lens.provenance); loaders replace this record with the checkpoint's
        provenance.record(
            self, "config", init="random" if init else "none", seed=(0 if seed is None else seed) if init else None,
            hashed=init,
        )  # fmt: skip

    # -- weights ------------------------------------------------------------------------------------
    def tie_weights(self) -> None:
        """Make the unembedding share the embedding's tensor when ``cfg.tie_word_embeddings`` (a no-op
        otherwise). ``__init__`` calls it; so does a placed load, whose empty (meta) construction gives every
        parameter its own tensor."""
        if self.cfg.tie_word_embeddings:
            self.unembed.weight = self.embed.weight

    @torch.no_grad()
    def init_weights(self, seed: int | None = None, std: float = 0.02) -> None:
        """GPT-2-style random init: N(0, std), output projections scaled by 1/sqrt(2 n_layers)."""
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else seed)
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith((".w",)):
                p.fill_(1.0)
            elif name.endswith((".b", "bias")):
                p.zero_()
            else:
                s = out_std if name.endswith(("o_weight", "out_weight")) else std
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * s)

    @classmethod
    def from_pretrained(
        cls,
        source: Any,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        context_size_override: int | None = None,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        refactor_factored_attn_matrices: bool = False,
        tokenizer: Any = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        device_map: Any = None,
        max_memory: dict | None = None,
        offload_folder: str | os.PathLike | None = None,
        n_devices: int | None = None,
        default_prepend_bos: bool | None = None,
    ) -> HookedTransformer:
        """Load a local Hugging Face-format directory, a hub name, or a ``transformers`` model object.

        ``source``: a directory with config.json and model.safetensors (sharded or not; pytorch_model.bin
        as a fallback; tokenizer.json attached when present), a hub name (``"org/name"`` or a TransformerLens
        name such as ``"gpt2-small"``) looked up in the Hugging Face cache first and downloaded (only the
        files lens reads) unless ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``; ``revision`` /
        ``cache_dir`` pick the snapshot and cache (:mod:`lens.hub`), or a ``transformers`` model. Families: see
        docs/families.md. ``dtype`` defaults to ``"auto"``: the checkpoint's ``config.json`` dtype (a bf16
        checkpoint loads as bf16; ``dtype="float32"`` upcasts); a model object keeps its own.
        Models trained on longer contexts load with ``cfg.n_ctx = lens.config.DEFAULT_MAX_CONTEXT`` (4096);
        ``context_size_override=N`` sets ``n_ctx`` to any ``N <= cfg.n_ctx_trained`` (above: ValueError).
        ``fold_ln`` / ``center_writing_weights`` / ``center_unembed`` / ``fold_value_biases`` are opt-in
        log-prob-preserving rewrites (:mod:`lens.processing`); a flag the architecture cannot honour
        (``center_writing_weights`` without LayerNorm) raises ValueError before loading, and
        ``fold_value_biases`` without value biases is a no-op. ``refactor_factored_attn_matrices`` balances
        each head's QK/OV factors as TransformerLens (refused for rotary and grouped-query models).
        ``tokenizer``: a :class:`lens.Tokenizer` or a ``transformers`` fast tokenizer to use instead of the
        checkpoint's (a model object's comes from the directory or hub-cache snapshot of its ``name_or_path``).
        ``device_map`` / ``max_memory`` / ``offload_folder`` / ``n_devices`` place a model larger than one device
        (:mod:`lens.placement`, through accelerate): blocks whole on GPUs, offloaded to CPU RAM or to disk, the
        residual stream moving between them; ``model.placement`` says where everything went.
        ``default_prepend_bos`` (TransformerLens's keyword): None follows the checkpoint's tokenizer (its
        ``add_bos_token`` or its post-processor), else the family's convention (docs/families.md); a bool wins.
        ``model.provenance`` records where the weights came from (:mod:`lens.provenance`; manifests copy it).
        Errors leave nothing half-loaded.

        >>> model = HookedTransformer.from_pretrained(Path("checkpoints/pythia-160m"), fold_ln=True)  # doctest: +SKIP
        >>> big = HookedTransformer.from_pretrained("Qwen/Qwen3-8B", device_map="auto",  # doctest: +SKIP
        ...                                         max_memory={0: "8GiB", "cpu": "24GiB"}, offload_folder="offload")
        """
        from lens.loading import from_pretrained
        from lens.processing import ProcessingFlags

        flags = ProcessingFlags(
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )
        return from_pretrained(
            source,
            dtype=dtype,
            device=device,
            context_size_override=context_size_override,
            model_class=cls,
            flags=flags,
            tokenizer=tokenizer,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload_folder,
            n_devices=n_devices,
            default_prepend_bos=default_prepend_bos,
        )

    def process_weights(
        self,
        *,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        refactor_factored_attn_matrices: bool = False,
    ) -> HookedTransformer:
        """Apply :mod:`lens.processing` steps in place (next-token log-probs unchanged); returns self."""
        from lens.processing import ProcessingFlags, process_weights

        flags = ProcessingFlags(
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )
        return process_weights(self, flags)

    # -- dtype and device ---------------------------------------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> HookedTransformer:
        """``nn.Module.to`` (device, dtype or both), keeping ``cfg.dtype`` and ``cfg.device`` in step.

        After ``model.to(torch.bfloat16)``, ``.half()``, ``.bfloat16()``, ``.float()``, ``.to("cpu", torch.float16)``,
        ``.to(dtype=...)``, ``.cuda()`` or ``.cpu()``, ``cfg.dtype`` is the parameters' dtype and ``cfg.device``
        their device, and the model computes as one loaded in that dtype with ``from_pretrained(dir, dtype=...)``
        (rotary inverse frequencies stay float32, cos/sin tables and activations follow the weights). The config
        is replaced by an updated copy on the model and its modules (as the ``set_use_*`` toggles do), so a
        config object shared with another model, or kept by the caller, is not changed. A
        :class:`lens.generation.KVCache` made before the move keeps its old dtype and device: make a new one
        (``generate`` makes its own). Going down and back up (``.bfloat16().float()``) keeps the rounding:
        the weights equal the bf16 model's, upcast.

        >>> model = model.to(torch.bfloat16)
        >>> model.cfg.dtype
        torch.bfloat16
        """
        return super().to(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        placed = getattr(self, "placement", None)
        moved = False
        if placed is not None:  # a placed model moved to one device is one device's model again
            probe = fn(torch.empty(0, dtype=self.cfg.dtype, device=placed.main))
            moved = probe.device != placed.main
            if moved and placed.offloaded:
                raise ValueError(
                    f"this model offloads {len(placed.offloaded)} block(s) (model.placement); it cannot move to one "
                    "device: reload it with device=... instead"
                )
            if probe.dtype != self.cfg.dtype and placed.offloaded:  # the offloaded weights would keep the old dtype
                raise ValueError(
                    f"this model offloads {len(placed.offloaded)} block(s) (model.placement), whose stored weights "
                    f"stay {self.cfg.dtype}; it cannot become {probe.dtype}: reload it with dtype={probe.dtype}"
                )
        if placed is not None and placed.offloaded:  # what is left is no move; offloaded weights stay on meta
            fn = (lambda f: lambda t: t if t.is_meta else f(t))(fn)
        super()._apply(fn, recurse)
        if moved:
            self.placement = None
        self._sync_cfg_dtype_device()
        return self

    def block_devices(self) -> list[torch.device]:
        """The device each block computes on: ``cfg.device`` for every block unless the model is placed
        (``from_pretrained(device_map=...)``), where an offloaded block computes on the main device."""
        if self.placement is not None:
            return list(self.placement.block_devices)
        return [self.embed.weight.device] * self.cfg.n_layers

    def _sync_cfg_dtype_device(self) -> None:
        """Set ``cfg.dtype`` / ``cfg.device`` to the floating parameters' (via a copy of the config, rebound on
        every module that shares it; nothing happens when they already agree)."""
        embed = self._modules.get("embed")
        if embed is None:  # moved while being built
            return
        w, old = embed.weight, self.cfg
        changes: dict[str, Any] = {}
        if old.dtype != w.dtype:
            changes["dtype"] = w.dtype
        if old.device is None or torch.device(old.device) != w.device:
            changes["device"] = w.device
        if not changes:
            return
        new = dataclasses.replace(old, **changes)
        for module in self.modules():
            if getattr(module, "cfg", None) is old:
                module.cfg = new

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        return self.unembed.b_U

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        if self.cfg.positional != "learned":
            raise AttributeError(f"this model has {self.cfg.positional!r} positions, no W_pos")
        return self.pos_embed.W_pos

    # -- input handling -----------------------------------------------------------------------------
    def _check_length(self, total: int) -> None:
        n_ctx = self.cfg.n_ctx
        if total > n_ctx:
            trained = self.cfg.n_ctx_trained
            if trained is not None and trained > n_ctx:
                hint = (
                    f"load with context_size_override=N (N <= {trained}, the trained maximum) to use a longer context"
                )
            elif trained is not None:
                hint = f"the model was trained on at most {trained} positions (context_size_override cannot raise it)"
            else:
                hint = "raise n_ctx in the config or load with context_size_override"
            raise ValueError(f"the input has {total} positions, but the model's context n_ctx is {n_ctx}; {hint}")

    def check_tokens(self, tokens: Tensor) -> Int[Tensor, "batch pos"]:
        """Token ids checked against this model: ``[batch, pos]`` (a ``[pos]`` input gains a batch dim),
        integer, at least one row and one position, inside ``[0, d_vocab)``, on the model's device.
        ``TypeError``/``ValueError`` otherwise.

        >>> model.check_tokens(torch.tensor([1, 2, 3])).shape
        torch.Size([1, 3])
        """
        if not isinstance(tokens, Tensor):
            raise TypeError(f"tokens must be a tensor, string or list of strings, got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
            raise TypeError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
        if tokens.shape[0] == 0:
            raise ValueError(f"tokens has shape {tuple(tokens.shape)}: a batch of size 0; give at least one row")
        if tokens.shape[1] == 0:
            raise ValueError("tokens has no positions (empty sequence)")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.d_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary [0, d_vocab={self.cfg.d_vocab})")
        return tokens.to(self.embed.weight.device)

    def _prepare_input(
        self, input: Any, attention_mask: Tensor | None, prepend_bos: bool | None, padding_side: str | None
    ) -> tuple[Tensor, Tensor | None]:
        if isinstance(input, (str, list)):
            tokens, mask = self.to_tokens(
                input, prepend_bos=prepend_bos, padding_side=padding_side, return_attention_mask=True
            )
            if attention_mask is None and not bool(mask.all()):
                attention_mask = mask
        else:
            tokens = input
        return self.check_tokens(tokens), attention_mask

    def check_attention_mask(
        self, attention_mask: Tensor | None, batch: int, length: int
    ) -> Int[Tensor, "batch pos"] | None:
        """``attention_mask`` checked against an input of ``[batch, length]`` (a ``[pos]`` mask gains a batch
        dim); None stays None. ``TypeError``/``ValueError`` naming the shapes otherwise.

        Values must be bool or 0/1 (any dtype): 1 (True) marks a real token, 0 (False) padding. Any other
        value (``2``, ``0.5``, ``-1``, nan) raises ValueError naming it, since it would otherwise shift the
        padding-aware positions and change the logits silently.

        >>> model.check_attention_mask(torch.tensor([0, 1, 1]), batch=1, length=3)
        tensor([[0, 1, 1]])
        """
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, Tensor):
            raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
        if attention_mask.ndim == 1:
            attention_mask = attention_mask.unsqueeze(0)
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, but the input is "
                f"[batch={batch}, pos={length}]; they must match"
            )
        if attention_mask.dtype != torch.bool:
            if attention_mask.is_complex():
                raise TypeError(f"attention_mask must be bool or hold 0/1, got dtype {attention_mask.dtype}")
            ok = (attention_mask == 0) | (attention_mask == 1)
            if not bool(ok.all()):
                bad = attention_mask[~ok][0].item()
                raise ValueError(
                    f"attention_mask holds the value {bad!r}; it must be bool or hold only 0 (padding) and 1 "
                    "(real token)"
                )
        return attention_mask

    def make_context(
        self,
        batch: int,
        q_len: int,
        attention_mask: Tensor | None = None,
        past_kv_cache: Any = None,
        device: torch.device | None = None,
    ) -> AttentionContext:
        """The per-forward attention context (positions, masks, rotary tables).

        With ``past_kv_cache``, the cache supplies the offset, the key-validity mask of everything
        cached plus ``attention_mask`` of the new tokens, and the new tokens' positions through
        ``past_kv_cache.prepare(attention_mask, q_len) -> (q_offset, full_mask | None, positions)``,
        and (optionally) ``past_kv_cache.key_positions`` for sliding-window ring buffers.
        """
        device = device or self.embed.weight.device
        if past_kv_cache is not None:
            q_offset, full_mask, positions = past_kv_cache.prepare(attention_mask, q_len)
            self._check_length(q_offset + q_len)
            ctx = AttentionContext.build(
                batch, q_len, full_mask, q_offset, positions, device=device, kv_cache=past_kv_cache
            )
            ctx.key_pos = getattr(past_kv_cache, "key_positions", None)  # ring-buffer slot positions
        else:
            self._check_length(q_len)
            ctx = AttentionContext.build(batch, q_len, attention_mask, device=device)
        if self.cfg.positional == "rotary":  # tables in the activations' dtype (float32 frequencies)
            dtype = self.embed.weight.dtype
            ctx.cos, ctx.sin = self.rotary.cos_sin(ctx.positions, dtype)
            if self.cfg.rotary_base_local is not None:
                ctx.cos_local, ctx.sin_local = self.rotary_local.cos_sin(ctx.positions, dtype)
        return ctx

    # -- forward ------------------------------------------------------------------------------------
    def embed_tokens(
        self, tokens: Int[Tensor, "batch pos"], ctx: AttentionContext
    ) -> Float[Tensor, "batch pos d_model"]:
        """hook_embed (+ hook_pos_embed for learned positions): the residual stream entering block 0."""
        resid = self.hook_embed(self.embed(tokens))
        if self.cfg.positional == "learned":
            resid = resid + self.hook_pos_embed(self.pos_embed(ctx.positions))
        return resid

    def input_to_embed(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"],
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        past_kv_cache: Any = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], Int[Tensor, "batch pos"], None, Int[Tensor, "batch k"] | None]:
        """The residual stream entering block 0, as TransformerLens: ``(residual, tokens, None, attention_mask)``.

        The forward's own first steps (input checks, :meth:`make_context`, ``hook_tokens``, :meth:`embed_tokens`),
        so ``model(residual, start_at_layer=0, tokens=tokens, attention_mask=attention_mask)`` equals
        ``model(input)``. ``tokens`` are the ids after ``hook_tokens``; the third item (TransformerLens's
        shortformer position embedding) is always None. ``attention_mask`` is the padding mask in use: the one
        given, the tokenizer's for padded string batches, None when no position is padding; with
        ``past_kv_cache`` it covers the cached positions too (``[batch, cached + pos]``), and the cache is
        prepared for these positions as a forward would (it advances only when blocks run with it).

        >>> resid, tokens, _, mask = model.input_to_embed("Hello world")
        >>> logits = model(resid, start_at_layer=0, tokens=tokens)
        """
        tokens, attention_mask = self._prepare_input(input, attention_mask, prepend_bos, padding_side)
        batch, length = tokens.shape
        attention_mask = self.check_attention_mask(attention_mask, batch, length)
        ctx = self.make_context(batch, length, attention_mask, past_kv_cache)
        tokens = self.hook_tokens(tokens) if self.cfg.use_hook_tokens else tokens
        if past_kv_cache is not None:
            attention_mask = ctx.key_valid
        return self.embed_tokens(tokens, ctx), tokens, None, attention_mask

    def forward(
        self,
        input: Int[Tensor, "batch pos"] | str | list[str] | Float[Tensor, "batch pos d_model"],
        return_type: str | None = "logits",
        loss_per_token: bool = False,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        tokens: Int[Tensor, "batch pos"] | None = None,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        past_kv_cache: Any = None,
        logits_to_keep: int = 0,
    ) -> Any:
        """Run the model.

        Args:
            input: token ids ``[batch, pos]`` (or ``[pos]``), a string or list of strings, or — with
                ``start_at_layer`` — the residual stream ``[batch, pos, d_model]`` entering that layer.
            return_type: ``"logits"``, ``"loss"`` (mean next-token cross-entropy), ``"both"``
                (``(logits, loss)``) or None.
            loss_per_token: return the loss per position ``[batch, pos - 1]`` instead of the mean.
            attention_mask: ``[batch, pos]``, 1 on real tokens, 0 on padding (left padding keeps
                each row's logits equal to the row run alone).
            start_at_layer / stop_at_layer: run only blocks ``[start, stop)``; with ``stop_at_layer``
                the residual stream before that block is returned.
            tokens: the token ids, needed for the loss when ``start_at_layer`` is set.
            past_kv_cache: a :class:`lens.generation.KVCache` holding earlier positions; ``input`` is then
                the new tokens only (and ``attention_mask`` covers them), and the cache advances past them.
            logits_to_keep: unembed only the last N positions (0: all), as Hugging Face's argument of the
                same name; the final norm and its hooks still see every position.

        >>> loss = model(tokens, return_type="loss")
        >>> resid = model(tokens, stop_at_layer=1)          # [batch, pos, d_model]
        >>> logits = model(resid, start_at_layer=1)
        """
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type={return_type!r} must be one of {RETURN_TYPES}")
        n = self.cfg.n_layers
        start = _layer_index(start_at_layer, n, "start_at_layer", 0)
        stop = _layer_index(stop_at_layer, n, "stop_at_layer", n)
        if start_at_layer is None:
            tokens, attention_mask = self._prepare_input(input, attention_mask, prepend_bos, padding_side)
            batch, length = tokens.shape
        else:
            if not isinstance(input, Tensor) or input.ndim != 3 or input.shape[-1] != self.cfg.d_model:
                raise ValueError(
                    f"with start_at_layer, input must be a residual stream [batch, pos, d_model={self.cfg.d_model}]"
                )
            batch, length = input.shape[:2]
            if batch == 0 or length == 0:
                raise ValueError(
                    f"the residual stream input has shape {tuple(input.shape)}; it needs at least one row and "
                    "one position"
                )
            if tokens is not None:
                tokens = self.check_tokens(tokens)
        attention_mask = self.check_attention_mask(attention_mask, batch, length)
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0 (0 keeps every position), got {logits_to_keep!r}")
        if logits_to_keep and return_type in ("loss", "both"):
            raise ValueError("the loss needs the logits of every position; logits_to_keep must be 0")
        if return_type in ("loss", "both") and stop_at_layer is None and tokens is None:
            raise ValueError("return_type='loss' with start_at_layer needs tokens=... for the targets")
        if return_type in ("loss", "both") and stop_at_layer is None and length < 2:
            raise ValueError(
                f"return_type={return_type!r}: the loss needs at least 2 positions (position i predicts token "
                f"i+1), the input has {length}"
            )

        ctx = self.make_context(batch, length, attention_mask, past_kv_cache)
        if start_at_layer is None:
            tokens = self.hook_tokens(tokens) if self.cfg.use_hook_tokens else tokens
            resid = self.embed_tokens(tokens, ctx)
        else:
            resid = input
        resid = self._run_blocks(resid, ctx, start, stop, past_kv_cache)
        if stop_at_layer is not None:
            return resid
        if return_type is None:
            if self.ln_final is not None:  # as TransformerLens: ln_final's hooks fire; no unembedding
                self.ln_final(resid)
            return None
        logits = self._unembed_final(resid, logits_to_keep)
        if return_type == "logits":
            return logits
        if self.placement is not None:  # the logits are on the unembedding's device
            tokens = tokens.to(logits.device)
            attention_mask = None if attention_mask is None else attention_mask.to(logits.device)
        loss = lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def _run_blocks(
        self, resid: Float[Tensor, "batch pos d_model"], ctx: Any, start: int, stop: int, kv_cache: Any
    ) -> Float[Tensor, "batch pos d_model"]:
        """Blocks ``[start, stop)`` over ``resid``; then a KV cache moves past these positions."""
        if self.placement is None:
            blocks = self.blocks if (start, stop) == (0, len(self.blocks)) else self.blocks[start:stop]  # no copy
            for block in blocks:
                resid = block(resid, ctx)
        else:  # the residual stream and the context (masks, rotary tables) follow each block's device
            contexts = {ctx.positions.device: ctx}
            for i in range(start, stop):
                device = self.placement.block_devices[i]
                if device not in contexts:
                    contexts[device] = ctx.to(device)
                resid = self.blocks[i](resid.to(device), contexts[device])
        if kv_cache is not None and hasattr(kv_cache, "advance"):
            kv_cache.advance(ctx.q_len)
        return resid

    def _unembed_final(self, resid: Float[Tensor, "batch pos d_model"], keep: int = 0) -> Tensor:
        """Final norm over every position (its hooks see them all), then logits of the last ``keep`` (0: all)."""
        if self.placement is not None:
            resid = resid.to(self.placement.output)
        if self.ln_final is not None:
            resid = self.ln_final(resid)
        return self.unembed(resid[:, -keep:] if keep else resid)

    # -- decoding -----------------------------------------------------------------------------------
    def decode_step(
        self,
        tokens: Int[Tensor, "batch q"],
        kv_cache: Any = None,
        attention_mask: Int[Tensor, "batch q"] | None = None,
        logits_to_keep: int | None = None,
    ) -> Float[Tensor, "batch vocab"] | Float[Tensor, "batch keep vocab"]:
        """One step of autoregressive decoding: float32 logits at the last position.

        ``tokens`` are the new positions (the prompt for a prefill, one token per row after it) and
        ``kv_cache`` (a :class:`lens.generation.KVCache`) holds everything before them and advances past
        them; ``attention_mask`` marks padding among the new tokens. Without a cache ``tokens`` is the
        whole sequence and ``attention_mask`` covers it. This is ``model(tokens, past_kv_cache=kv_cache,
        logits_to_keep=1)``: the ordinary forward, so every hook (hook points, PyTorch module hooks,
        global module hooks) fires on every step. ``generate``, beam search and streaming all decode
        through it. ``logits_to_keep=N`` returns the logits of the last ``N`` positions ``[batch, N, vocab]``
        instead (speculative decoding verifies ``N - 1`` proposed tokens in one step).

        >>> cache = KVCache.for_model(model, batch=1, max_len=16)
        >>> logits = model.decode_step(prompt, cache)                        # [1, d_vocab]
        >>> logits = model.decode_step(logits.argmax(-1, keepdim=True), cache)
        """
        if logits_to_keep is not None:
            return self(
                tokens, past_kv_cache=kv_cache, attention_mask=attention_mask, logits_to_keep=logits_to_keep
            ).float()
        logits = self(tokens, past_kv_cache=kv_cache, attention_mask=attention_mask, logits_to_keep=1)
        return logits[:, -1].float()

    @contextmanager
    def decoding(self, batch: int, steps: int) -> Iterator[HookedTransformer]:
        """Declare that about ``steps`` one-token :meth:`decode_step` calls of ``batch`` rows follow.

        Components may keep a decode-friendly layout of a weight for the duration (built on entry, dropped on
        exit; today: the unembedding of a tied model decoding one row on CPU, see
        :mod:`lens.components.embed`). Results are the same inside and outside; only speed differs.
        ``generate`` enters it once per call.

        >>> with model.decoding(batch=1, steps=100):
        ...     logits = model.decode_step(next_token, cache)
        """
        with self.unembed.decode_layout(batch, steps):
            yield self

    def generate(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"] = "",
        max_new_tokens: int | None = None,
        *,
        config: GenerationConfig | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        **settings: Any,
    ) -> Any:
        """Continue ``input`` by up to ``max_new_tokens`` tokens (None: fill the rest of the context).

        ``input``: a string, a list of strings (left-padded into one batch), chat messages (a list of
        ``{"role", "content"}`` dicts, or a list of such lists for a batch: rendered with
        ``apply_chat_template(..., add_generation_prompt=True)``, no BOS added beyond the template's), or token
        ids ``[pos]`` / ``[batch, pos]`` (with ``attention_mask`` when left-padded). Settings are the fields of
        :class:`lens.generation.GenerationConfig` (``do_sample``, ``temperature``, ``top_k``, ``top_p``,
        ``min_p``, ``repetition_penalty``, ``num_beams``, ``length_penalty``, ``early_stopping``,
        ``stop_at_eos``, ``eos_token_id``, ``prepend_bos``, ``padding_side``, ``seed``,
        ``use_past_kv_cache``, ``kv_cache_dtype``, ``return_type``, ``output_logprobs``, ``return_cache``,
        ``names_filter``, ``verbose``), given as keywords, as ``config=``, or both (keywords win). Greedy
        by default; tokens, samples and beams equal ``transformers``' ``generate`` for the same weights.
        Hooks set with ``model.hooks(...)`` fire on the prompt's forward and on every decode step.

        Returns the output (same kind as ``input`` unless ``return_type`` says otherwise), or
        ``GenerationOutput(output, logprobs, cache)`` when ``output_logprobs`` or ``return_cache`` is set.

        >>> model.generate("The cat", max_new_tokens=10)                          # str in, str out
        >>> model.generate(tokens, 20, do_sample=True, top_p=0.9, seed=0)          # tokens in, tokens out
        >>> model.generate(["Hi", "A longer prompt"], config=GenerationConfig(max_new_tokens=8, num_beams=4))
        """
        if max_new_tokens is not None:
            settings["max_new_tokens"] = max_new_tokens
        cfg = generation.config.resolve(config, settings)
        return generation.generate(self, input, cfg, attention_mask)

    def generate_stream(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"] = "",
        max_new_tokens: int | None = None,
        *,
        config: GenerationConfig | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        **settings: Any,
    ) -> Iterator[Any]:
        """Like :meth:`generate` (without beams or ``return_cache``), yielding each step's output as it exists.

        Yields text deltas for string prompts (one string, or a list per row), else the new tokens
        ``[batch]``; ``(item, logprobs [batch])`` with ``output_logprobs``. Settings are checked here,
        before the first item is asked for.

        >>> for piece in model.generate_stream("Once upon a time", 50):
        ...     print(piece, end="")
        """
        if max_new_tokens is not None:
            settings["max_new_tokens"] = max_new_tokens
        cfg = generation.config.resolve(config, settings)
        return generation.generate_stream(self, input, cfg, attention_mask)

    def loss_fn(
        self,
        logits: Float[Tensor, "batch pos vocab"],
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        per_token: bool = False,
    ) -> Tensor:
        """Next-token cross-entropy of ``logits`` against ``tokens`` (TransformerLens's loss_fn)."""
        return lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedTransformer({c.model_name}: {c.n_layers} layers, d_model={c.d_model}, "
            f"heads={c.n_heads}/{c.n_key_value_heads}, d_vocab={c.d_vocab}, n_ctx={c.n_ctx})"
        )


def _layer_index(value: int | None, n_layers: int, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not -n_layers <= value <= n_layers:
        raise ValueError(f"{name}={value} is out of range for a model with {n_layers} layers")
    return value % n_layers if value < 0 else value
