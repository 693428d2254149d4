"""Hook points and the hook-management API shared by every lens model.

A :class:`HookPoint` is an identity module placed at each activation. Hook functions
``fn(activation, hook)`` attached to it may read the activation or return a tensor that replaces it.
:class:`HookedRootModule` names every hook point after its module path and provides
``run_with_hooks``, ``run_with_cache``, ``hooks()``, ``add_hook`` and ``reset_hooks`` with
TransformerLens's semantics. Hooks added for one call are always removed, even when the forward raises.

HookPoint keeps its own hook lists instead of torch's module hooks: a forward with no hooks pays a few
attribute checks per hook point, and components can ask ``hook.has_hooks`` to pick a fused fast path
(e.g. ``scaled_dot_product_attention``) when nobody is watching. PyTorch module hooks set on a HookPoint
(or globally) still fire: the HookPoint is then called through ``nn.Module.__call__``.

Threads: hooks added for one call (``run_with_hooks``, ``run_with_cache``, ``with model.hooks(...)``)
belong to the thread that added them and fire only there, so one model can serve several threads at once
(each call sees only its own hooks, and ``has_hooks`` answers per thread). Hooks added with
``model.add_hook`` / ``HookPoint.add_hook`` are global: they fire in every thread.

Example:
    >>> def zero_head_0(z, hook):
    ...     z[:, :, 0] = 0.0
    ...     return z
    >>> logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head_0)])
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from lens.activation_pool import ActivationPool
from lens.hook_cache import HookCache
from lens.hook_management import HookManagementMixin
from lens.names import unknown_hook_error
from lens.utilities.slicing import Slice

HookFn = Callable[..., Any]
NameFilter = str | Sequence[str] | Callable[[str], bool] | None
HookSpec = tuple[str | Callable[[str], bool], HookFn]

_epoch = 0  # bumped whenever any hook point gains or loses a hook (see hook_epoch)


def hook_epoch() -> int:
    """A counter that changes whenever a hook is added to or removed from any :class:`HookPoint`.

    Lets a loop that asked "is anything hooked?" skip asking again until the answer may have changed
    (the generation loop checks it once per step instead of scanning every hook point).
    """
    return _epoch


def _bump_epoch() -> None:
    global _epoch
    _epoch += 1


_current_thread = threading.current_thread


class _Handle:
    """Removal handle for one hook function on one HookPoint.

    ``owner`` is None for a global hook, else the thread whose call added it (the hook fires only there).
    """

    __slots__ = ("point", "fn", "dir", "permanent", "level", "tensor_handles", "owner")

    def __init__(
        self,
        point: HookPoint,
        fn: HookFn,
        dir: str,
        permanent: bool,
        level: int | None,
        owner: threading.Thread | None = None,
    ):
        self.point, self.fn, self.dir, self.permanent, self.level = point, fn, dir, permanent, level
        self.owner = owner
        self.tensor_handles: list[Any] = []

    def live(self) -> bool:
        """True when this hook fires in the calling thread (global, or added by this thread)."""
        return self.owner is None or self.owner is _current_thread()

    # TransformerLens's LensHandle names: ``handle.hook.remove()``, ``handle.is_permanent``, ``handle.context_level``
    @property
    def hook(self) -> _Handle:
        """This handle (TransformerLens keeps a torch ``RemovableHandle`` here; ``.hook.remove()`` works on both)."""
        return self

    @property
    def is_permanent(self) -> bool:
        return self.permanent

    @property
    def context_level(self) -> int | None:
        return self.level

    def removable(self) -> bool:
        """True unless the hook belongs to a call still running in another thread."""
        return self.owner is None or self.owner is _current_thread() or not self.owner.is_alive()

    def remove(self) -> None:
        lst = self.point._fwd if self.dir == "fwd" else self.point._bwd
        try:
            lst.remove(self)
        except ValueError:  # already removed
            pass
        else:
            _bump_epoch()
        for h in self.tensor_handles:
            h.remove()
        self.tensor_handles.clear()


LensHandle = _Handle  # TransformerLens's name for a hook's removal handle (``transformer_lens.hook_points``)

# torch's process-wide module hooks (``nn.modules.module.register_module_forward_hook`` & co.): dicts torch
# mutates in place, read here so a HookPoint can take torch's call path when one is set. Where a torch
# version lacks one, it counts as empty.
_G_FWD = getattr(_torch_module, "_global_forward_hooks", {})
_G_PRE = getattr(_torch_module, "_global_forward_pre_hooks", {})
_G_BWD = getattr(_torch_module, "_global_backward_hooks", {})
_G_BWD_PRE = getattr(_torch_module, "_global_backward_pre_hooks", {})


def _torch_global_hooks_set() -> bool:
    return bool(_G_FWD or _G_PRE or _G_BWD or _G_BWD_PRE)


class HookPoint(nn.Module):
    """An identity module that calls the hook functions attached to it.

    ``fn(activation, hook)`` receives the activation and this HookPoint (``hook.name`` is its full
    name). A forward hook that returns a tensor replaces the activation; it must keep the shape.
    A backward hook receives the gradient with respect to the activation.

    >>> hp = HookPoint(); hp.name = "demo"
    >>> _ = hp.add_hook(lambda x, hook: x * 2)
    >>> hp(torch.ones(2)).tolist()
    [2.0, 2.0]
    """

    clone_for_edit = False
    """Set by a component when the op producing this activation keeps it for its own backward (softmax,
    sqrt, relu, fused attention). With gradients on and a hook that may edit, the hooks then receive a copy,
    so an in-place edit (``x[:, 0] = 0``) takes effect and ``backward()`` still works, as in TransformerLens."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self._fwd: list[_Handle] = []
        self._bwd: list[_Handle] = []
        self.ctx: dict[Any, Any] = {}

    @property
    def has_hooks(self) -> bool:
        """True when a forward or backward hook fires here in the calling thread (components then skip fused
        paths); another thread's call hooks do not count."""
        if (self._fwd or self._bwd) and any(h.live() for h in (*self._fwd, *self._bwd)):
            return True
        return self.torch_hooked

    @property
    def torch_hooked(self) -> bool:
        """True when a PyTorch module hook (``register_forward_hook``, ``register_forward_pre_hook``, a full
        backward hook, or a global module hook) is set on this HookPoint: it is then called through
        ``nn.Module.__call__`` so those hooks fire around the lens hooks, as on any other module."""
        return bool(
            self._forward_hooks
            or self._forward_pre_hooks
            or self._backward_hooks
            or self._backward_pre_hooks
            or _torch_global_hooks_set()
        )

    @property
    def may_edit(self) -> bool:
        """True unless every attached hook is a forward hook marked ``read_only`` (e.g. caching hooks).

        Components use this to keep a fused kernel while still reporting an intermediate value:
        a read-only hook sees the value but cannot change what the fused kernel computes.
        """
        return (
            self.torch_hooked
            or any(h.live() for h in self._bwd)
            or any(h.live() and not getattr(h.fn, "read_only", False) for h in self._fwd)
        )

    @property
    def fwd_hooks(self) -> list[_Handle]:
        """The forward hooks that fire here in the calling thread, in order (TransformerLens's list of handles:
        ``len(hp.fwd_hooks)``, ``for h in hp.fwd_hooks: h.hook.remove()``). A new list on each access."""
        return [h for h in self._fwd if h.live()]

    @property
    def bwd_hooks(self) -> list[_Handle]:
        """The backward hooks that fire here in the calling thread (see :attr:`fwd_hooks`)."""
        return [h for h in self._bwd if h.live()]

    def layer(self) -> int:
        """The block index in this hook's name: 3 for ``blocks.3.attn.hook_q``, as TransformerLens.

        ValueError for a hook outside the blocks (``hook_embed``, ``ln_final.hook_scale``) or without a name.

        >>> model.hook_dict["blocks.1.mlp.hook_post"].layer()
        1
        """
        parts = (self.name or "").split(".")
        if self.name is None or len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(
                f"hook {self.name!r} is not inside a block (names of the form 'blocks.<layer>.<...>' have a layer)"
            )
        return int(parts[1])

    def add_perma_hook(self, fn: HookFn, dir: str = "fwd") -> _Handle:
        """Attach a permanent hook: ``reset_hooks()`` keeps it, ``reset_hooks(including_permanent=True)`` removes it."""
        return self.add_hook(fn, dir, is_permanent=True)

    def add_hook(
        self,
        fn: HookFn,
        dir: str = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> _Handle:
        """Attach ``fn(activation, hook)``; ``dir`` is ``"fwd"`` or ``"bwd"``. Returns a handle.

        The hook is global: it fires in every thread (hooks of ``model.hooks(...)`` fire only in theirs).
        """
        return self._attach(fn, dir, is_permanent, level, prepend, None)

    def _attach(
        self, fn: HookFn, dir: str, is_permanent: bool, level: int | None, prepend: bool, owner: threading.Thread | None
    ) -> _Handle:
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        if not callable(fn):
            raise TypeError(f"hook function for {self.name} must be callable, got {type(fn).__name__}")
        handle = _Handle(self, fn, dir, is_permanent, level, owner)
        lst = self._fwd if dir == "fwd" else self._bwd
        lst.insert(0, handle) if prepend else lst.append(handle)
        _bump_epoch()
        return handle

    def remove_hooks(self, dir: str = "both", including_permanent: bool = False, level: int | None = None) -> None:
        """Remove hooks in direction ``dir`` ("fwd", "bwd" or "both").

        Hooks of a call running in another thread stay: they belong to that call, which removes them.
        """
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")
        lists = {"fwd": [self._fwd], "bwd": [self._bwd], "both": [self._fwd, self._bwd]}[dir]
        for lst in lists:
            for h in list(lst):
                if (including_permanent or not h.permanent) and (level is None or h.level == level) and h.removable():
                    h.remove()

    def clear_context(self) -> None:
        self.ctx.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The lens hooks (what ``nn.Module.__call__`` runs when PyTorch module hooks are set here)."""
        return self._lens_call(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks:
            return nn.Module.__call__(self, x)
        if _G_FWD or _G_PRE or _G_BWD or _G_BWD_PRE:
            return nn.Module.__call__(self, x)
        return self._lens_call(x)

    def _lens_call(self, x: torch.Tensor) -> torch.Tensor:
        if self._fwd:  # the unhooked path is this one check (and the next)
            x = self._run_fwd(x)
        if self._bwd and x.requires_grad:
            for h in tuple(self._bwd):
                if h.live():
                    h.tensor_handles.append(x.register_hook(functools.partial(_call_bwd, h.fn, self)))
        return x

    def _run_fwd(self, x: torch.Tensor) -> torch.Tensor:
        if self.clone_for_edit and x.requires_grad and torch.is_grad_enabled() and self.may_edit:
            x = x.clone()  # the producer saved x for backward; hooks edit a copy (see clone_for_edit)
        me = None
        for h in tuple(self._fwd):
            if h.owner is not None:
                if me is None:
                    me = _current_thread()
                if h.owner is not me:
                    continue  # another thread's call hook
            out = h.fn(x, hook=self)
            if out is not None:
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"hook {_fn_name(h.fn)} on {self.name} returned {type(out).__name__}; return a tensor or None"
                    )
                if out.shape != x.shape:
                    raise ValueError(
                        f"hook {_fn_name(h.fn)} on {self.name} returned a tensor of shape {tuple(out.shape)}, but "
                        f"the activation has shape {tuple(x.shape)}; a hook must keep the shape"
                    )
                if out.dtype != x.dtype or out.device != x.device:
                    raise ValueError(
                        f"hook {_fn_name(h.fn)} on {self.name} returned a tensor of dtype {out.dtype} on "
                        f"{out.device}, but the activation is {x.dtype} on {x.device}; a hook must keep the dtype "
                        "and device (convert with .to(activation))"
                    )
                x = out
        return x


# [batch, head, query_pos, key_pos] activations: pos_slice selects query positions (dim -2); every other
# activation has its position dimension right after the batch dimension
_QUERY_POS = ("hook_pattern", "hook_attn_scores")


def _fn_name(fn: HookFn) -> str:
    """A hook function's name for error messages (``functools.partial`` unwrapped)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _call_bwd(fn: HookFn, point: HookPoint, grad: torch.Tensor) -> torch.Tensor | None:
    out = fn(grad, hook=point)
    if out is not None and out.shape != grad.shape:
        raise ValueError(
            f"backward hook on {point.name} returned shape {tuple(out.shape)}, expected {tuple(grad.shape)}"
        )
    if out is not None and (out.dtype != grad.dtype or out.device != grad.device):
        raise ValueError(
            f"backward hook {_fn_name(fn)} on {point.name} returned a gradient of dtype {out.dtype} on {out.device}, "
            f"expected {grad.dtype} on {grad.device}"
        )
    return out


class HookedRootModule(HookManagementMixin, nn.Module):
    """Base class that names hook points and manages hooks on them.

    Subclasses build their modules, then call :meth:`setup` once so each HookPoint learns its name.
    """

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]
    cache_class: type = HookCache
    """What ``run_with_cache`` returns: ``cache_class(dict, model, has_batch_dim=...)``."""

    def setup(self) -> None:
        """Name every HookPoint after its module path and index them in ``hook_dict``."""
        self.hook_dict = {}
        self.mod_dict = {}
        for name, module in self.named_modules():
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    # -- resolving names ----------------------------------------------------------------------
    def _resolve(self, name_or_filter: str | Callable[[str], bool]) -> list[HookPoint]:
        if isinstance(name_or_filter, str):
            if name_or_filter not in self.hook_dict:
                raise unknown_hook_error(name_or_filter, self.hook_dict)
            return [self.hook_dict[name_or_filter]]
        if callable(name_or_filter):
            return [hp for name, hp in self.hook_dict.items() if name_or_filter(name)]
        raise TypeError(f"a hook target must be a hook name or a callable filter, got {type(name_or_filter).__name__}")

    def names_filter_fn(self, names_filter: NameFilter) -> Callable[[str], bool]:
        """Normalise ``names_filter`` (None, a name, a list of names or a callable) to a predicate."""
        if names_filter is None:
            return lambda name: True
        if isinstance(names_filter, str):
            self._resolve(names_filter)
            return lambda name: name == names_filter
        if callable(names_filter):
            return names_filter
        if isinstance(names_filter, (list, tuple, set)):
            wanted = set()
            for n in names_filter:
                if not isinstance(n, str):
                    raise TypeError(f"names_filter entries must be str, got {type(n).__name__}")
                self._resolve(n)
                wanted.add(n)
            return lambda name: name in wanted
        raise TypeError(f"names_filter must be None, a str, a list of str or a callable, got {names_filter!r}")

    # -- adding and removing ------------------------------------------------------------------
    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: str = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> list[_Handle]:
        """Attach ``hook`` to the named hook point (or to every point a filter selects); it fires in every
        thread (hooks of ``run_with_hooks`` / ``run_with_cache`` / ``hooks()`` fire only in their own)."""
        return [
            self.check_and_add_hook(hp, hp.name, hook, dir, is_permanent, level, prepend) for hp in self._resolve(name)
        ]

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[HookSpec] = (),
        bwd_hooks: Sequence[HookSpec] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedRootModule]:
        """Context manager: hooks are attached on entry and removed on exit (also on error).

        The hooks belong to the calling thread: forwards run by other threads meanwhile do not see them
        (and ``has_hooks`` there stays False), so one model can serve several threads at once.
        With ``reset_hooks_end=False`` they stay attached, still only for this thread.
        ``clear_contexts=True`` also empties every hook point's ``ctx`` when the hooks are removed (TransformerLens).

        >>> with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: x * 0)]):
        ...     logits = model(tokens)
        """
        handles: list[_Handle] = []
        owner = _current_thread()
        try:
            for dir, specs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for spec in specs:
                    if not (isinstance(spec, (tuple, list)) and len(spec) == 2):
                        raise TypeError(f"each hook must be a (name_or_filter, fn) pair, got {spec!r}")
                    for hp in self._resolve(spec[0]):
                        self.check_hooks_to_add(hp, hp.name, spec[1], dir=dir)
                        handles.append(hp._attach(spec[1], dir, False, None, False, owner))
            yield self
        finally:
            if reset_hooks_end:
                for h in handles:
                    h.remove()
                if clear_contexts:
                    self.clear_contexts()

    def run_with_hooks(
        self,
        *args: Any,
        fwd_hooks: Sequence[HookSpec] = (),
        bwd_hooks: Sequence[HookSpec] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Run the forward with temporary hooks; they are removed afterwards even if it raises.

        With ``bwd_hooks`` and ``reset_hooks_end=True`` the backward hooks are only live for a
        backward pass run inside a ``with model.hooks(...)`` block, as in TransformerLens; a warning
        would be silent, so pass ``reset_hooks_end=False`` and call ``reset_hooks()`` yourself.
        """
        if clear_contexts:
            for hp in self.hook_dict.values():
                hp.clear_context()
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end):
            return self(*args, **kwargs)

    def get_caching_hooks(
        self,
        names_filter: NameFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, torch.Tensor] | None = None,
        pos_slice: Any = None,
        pool: ActivationPool | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[HookSpec], list[HookSpec]]:
        """Hooks that store activations (and gradients as ``name + "_grad"``) into a dict.

        ``pos_slice`` (TransformerLens's argument: a :class:`lens.utils.Slice` or what it accepts, e.g. ``-1``
        or ``(0, 5)``) keeps only those positions of each activation (the dimension after batch; the query
        positions of patterns and scores). A plain int keeps the dimension (``-1`` -> length 1), a
        ``Slice(-1)`` drops it, as in TransformerLens.

        With a ``pool`` (see :mod:`lens.activation_pool`) each activation is stored as a copy taken when
        its hook fired, on every device (CPU copies land in recycled memory); an activation seen by several
        hook points (``resid_post`` of one block is ``resid_pre`` of the next) is copied once and shared.
        Without one, the dict keeps references to the forward's own tensors.
        """
        cache = {} if cache is None else cache
        keep = self.names_filter_fn(names_filter)
        copies: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
        if isinstance(pos_slice, int) and not isinstance(pos_slice, bool):
            pos_slice = [pos_slice]  # as TransformerLens: a plain int keeps the position dimension (a Slice drops it)
        pos = None if pos_slice is None else Slice(pos_slice)  # checked here, before any forward
        if pos is not None and pos.mode == "identity":
            pos = None

        def pooled(tensor: torch.Tensor) -> torch.Tensor:
            seen = copies.get(id(tensor))
            if seen is not None and seen[0]() is tensor:
                return seen[1]
            out = pool.take(tensor.detach())
            copies[id(tensor)] = (weakref.ref(tensor), out)
            return out

        def save(tensor: torch.Tensor, hook: HookPoint, suffix: str = "") -> None:
            t = tensor.detach()
            if remove_batch_dim:
                t = t[0]
            moved = t.to(device) if device is not None else t
            if moved is t and pool is not None:  # not moved (a move is a copy already): copy through the pool
                moved = pooled(tensor)[0] if remove_batch_dim else pooled(tensor)
            if pos is not None:
                dim = -2 if hook.name.endswith(_QUERY_POS) else (0 if remove_batch_dim else 1)
                if moved.ndim >= (2 if dim else 1):  # activations with a position dimension
                    moved = pos.apply(moved, dim)
            cache[hook.name + suffix] = moved

        save.read_only = True  # lets components keep fused kernels (see HookPoint.may_edit)
        names = [n for n in self.hook_dict if keep(n)]
        fwd = [(n, save) for n in names]
        bwd = [(n, functools.partial(save, suffix="_grad")) for n in names] if incl_bwd else []
        return cache, fwd, bwd

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, but a non-float tensor for a float parameter or buffer raises ValueError
        naming it before anything is copied (torch would convert it silently: a quantised or corrupt checkpoint)."""
        own = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        for name, value in state_dict.items() if hasattr(state_dict, "items") else ():
            target = own.get(name)
            if isinstance(value, torch.Tensor) and target is not None and target.is_floating_point():
                if not value.is_floating_point():
                    raise ValueError(
                        f"state_dict tensor {name!r} has dtype {value.dtype}, but {name} is {target.dtype}"
                    )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def clear_activation_pool(self) -> None:
        """Release the memory ``run_with_cache`` keeps for reuse (see :mod:`lens.activation_pool`)."""
        pool = self.__dict__.get("_activation_pool")
        if pool is not None:
            pool.clear()

    def run_with_cache(
        self,
        *args: Any,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        reuse_memory: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        cache_device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run the forward and return ``(output, cache)`` of the selected activations.

        ``device`` (or its other name ``cache_device``): where the cached copies go (default: where each
        activation was computed, so a model placed on several devices gives a cache spread over them;
        ``cache_device="cpu"`` gathers it on one device).

        ``pos_slice``: keep only these positions of each activation (see :meth:`get_caching_hooks`);
        ``clear_contexts=True`` empties every hook point's ``ctx`` first (as :meth:`run_with_hooks`).

        The cache is ``self.cache_class`` (:class:`lens.hook_cache.HookCache`; a transformer's is
        :class:`lens.ActivationCache`).

        ``names_filter``: None (all), a hook name, a list of names, or ``fn(name) -> bool``.
        ``incl_bwd=True`` also backpropagates ``output`` (which must then be a scalar, e.g.
        ``return_type="loss"``) and stores gradients under ``name + "_grad"``; it needs gradients enabled
        (under ``torch.no_grad()`` or ``torch.inference_mode()`` it raises ValueError before running).
        ``reuse_memory=True`` (default): every cached value is a copy taken when its hook fired, on every
        device, so a later in-place edit of the activation (by another hook) never shows in the cache; on
        CPU the copies land in memory recycled from earlier caches that are gone (:mod:`lens.activation_pool`;
        ``model.clear_activation_pool()`` releases it). A buffer is recycled only when no tensor, view or
        NumPy array of it is alive; a bare ``untyped_storage()`` does not keep it, so keep a tensor.
        ``reuse_memory=False`` keeps references to the forward's own tensors, as TransformerLens does.
        Threads: the caching hooks belong to the calling thread, so concurrent ``run_with_cache`` calls on one
        model (from several threads) each record only their own forward; hooks added with ``model.add_hook``
        fire in every thread (docs/hooks.md).

        >>> logits, cache = model.run_with_cache("Hello", names_filter=lambda n: "pattern" in n)
        >>> cache["pattern", 0].shape  # [batch, head, query_pos, key_pos]
        """
        if cache_device is not None:
            if device is not None and torch.device(device) != torch.device(cache_device):
                raise ValueError(f"device={device!r} and cache_device={cache_device!r} disagree; pass one of them")
            device = cache_device
        if incl_bwd and not torch.is_grad_enabled():
            where = "torch.inference_mode()" if torch.is_inference_mode_enabled() else "torch.no_grad()"
            raise ValueError(
                f"run_with_cache(incl_bwd=True) needs gradients, but it was called under {where}; call it "
                "outside that block (or with torch.enable_grad())"
            )
        if remove_batch_dim:
            batch = _batch_size(args, kwargs)
            if batch is not None and batch != 1:
                raise ValueError(f"remove_batch_dim=True needs batch size 1, got {batch}")
        pool = None
        if reuse_memory:
            pool = self.__dict__.get("_activation_pool")
            if pool is None:  # setdefault: two threads starting at once share one pool
                pool = self.__dict__.setdefault("_activation_pool", ActivationPool())
            pool.new_call()
        store, fwd, bwd = self.get_caching_hooks(
            names_filter, incl_bwd, device, remove_batch_dim, pos_slice=pos_slice, pool=pool
        )
        if clear_contexts:
            for hp in self.hook_dict.values():
                hp.clear_context()
        with self.hooks(fwd, bwd, reset_hooks_end):
            out = self(*args, **kwargs)
            if incl_bwd:
                target = out[0] if isinstance(out, tuple) else out
                if not isinstance(target, torch.Tensor) or target.numel() != 1:
                    raise ValueError("incl_bwd=True needs a scalar output to backpropagate (use return_type='loss')")
                target.backward()
        return out, self.cache_class(store, self, has_batch_dim=not remove_batch_dim)


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    first = args[0] if args else kwargs.get("input", kwargs.get("tokens"))
    if isinstance(first, torch.Tensor) and first.ndim >= 2:
        return first.shape[0]
    if isinstance(first, (list, tuple)):
        return len(first)
    if isinstance(first, str):
        return 1
    return None
