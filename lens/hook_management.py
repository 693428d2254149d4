"""TransformerLens's hook-management API on a hooked root module: permanent hooks, removal by direction and
level, hook contexts, the ``check_hooks_to_add`` override point and the caching-hook helpers.

:class:`HookManagementMixin` is a base of :class:`lens.hooks.HookedRootModule`; it works through the module's
``hook_dict``, ``add_hook``/``_resolve`` and ``get_caching_hooks`` (no import of :mod:`lens.hooks`, so the
two modules do not import each other). Hooks added here are global (they fire in every thread).

>>> model.add_perma_hook("blocks.0.hook_resid_pre", lambda x, hook: x * 0.5)
>>> model.reset_hooks()                           # keeps it
>>> model.reset_hooks(including_permanent=True)  # removes it
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


class HookManagementMixin:
    """Hook management with TransformerLens's names and signatures (see the module docs)."""

    is_caching: bool = False  # True after add_caching_hooks / get_caching_hooks until reset_hooks (TransformerLens)
    context_level: int = 0  # TransformerLens's nesting depth of hooks(); lens removes a call's hooks by handle

    def add_perma_hook(
        self, name: str | Callable[[str], bool], hook: Callable[..., Any], dir: str = "fwd"
    ) -> list[Any]:
        """:meth:`add_hook` with ``is_permanent=True``: survives ``reset_hooks()`` (not ``including_permanent=True``).

        >>> model.add_perma_hook("blocks.0.hook_resid_pre", lambda x, hook: x * 0.5)
        """
        return self.add_hook(name, hook, dir=dir, is_permanent=True)

    def check_hooks_to_add(
        self,
        hook_point: Any,
        hook_point_name: str,
        hook: Callable[..., Any],
        dir: str = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Called before every hook is attached (:meth:`add_hook`, :meth:`hooks`, ``run_with_hooks``,
        ``run_with_cache``); raise here to refuse one. A no-op by default (override point, as TransformerLens)."""

    def check_and_add_hook(
        self,
        hook_point: Any,
        hook_point_name: str,
        hook: Callable[..., Any],
        dir: str = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> Any:
        """:meth:`check_hooks_to_add`, then attach ``hook`` to ``hook_point`` (a global hook); returns its handle."""
        self.check_hooks_to_add(hook_point, hook_point_name, hook, dir=dir, is_permanent=is_permanent, prepend=prepend)
        return hook_point.add_hook(hook, dir, is_permanent, level, prepend)

    def remove_all_hook_fns(
        self, direction: str = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove hook functions in ``direction`` ("fwd", "bwd" or "both") from every hook point: the
        non-permanent ones (all with ``including_permanent=True``), only those of ``level`` when given.
        The hooks of a call running in another thread stay (that call removes them itself)."""
        if direction not in ("fwd", "bwd", "both"):
            raise ValueError(f"direction must be 'fwd', 'bwd' or 'both', got {direction!r}")
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        """Empty every hook point's ``ctx`` dict (state hooks keep between calls)."""
        for hp in self.hook_dict.values():
            hp.clear_context()

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: str = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove all (non-permanent, unless asked) hooks from every hook point and, by default, clear the hook
        contexts: TransformerLens's signature. The hooks of a call running in another thread stay (that call
        removes them itself).

        >>> model.reset_hooks()                           # keeps permanent hooks, clears hook.ctx
        >>> model.reset_hooks(including_permanent=True)  # everything
        """
        if not isinstance(clear_contexts, bool):
            raise TypeError(
                f"clear_contexts must be a bool, got {clear_contexts!r} (reset_hooks's arguments are "
                "(clear_contexts, direction, including_permanent, level), as in TransformerLens; pass them by name)"
            )
        self.remove_all_hook_fns(direction, including_permanent, level)
        if clear_contexts:
            self.clear_contexts()
        self.is_caching = False

    def hook_points(self) -> list[HookPoint]:
        """Every hook point, in module order."""
        return list(self.hook_dict.values())

    def add_caching_hooks(
        self,
        names_filter: Any = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Attach caching hooks (global, until ``reset_hooks()``) and return the dict they fill on later forwards.

        Stores references to the activations (no copies), as TransformerLens. Prefer :meth:`run_with_cache`.

        >>> cache = model.add_caching_hooks("hook_embed"); _ = model(tokens); model.reset_hooks()
        """
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache)
        for dir, specs in (("fwd", fwd), ("bwd", bwd)):
            for name, fn in specs:
                self.add_hook(name, fn, dir=dir)
        self.is_caching = True
        return cache

    def cache_all(
        self,
        cache: dict[str, torch.Tensor] | None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
    ) -> None:
        """Deprecated (as in TransformerLens): :meth:`add_caching_hooks` for every hook point, into ``cache``."""
        warnings.warn("cache_all is deprecated; use run_with_cache or add_caching_hooks", DeprecationWarning, 2)
        self.add_caching_hooks(None, incl_bwd, device, remove_batch_dim, cache)

    def cache_some(
        self,
        cache: dict[str, torch.Tensor] | None,
        names: Any,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
    ) -> None:
        """Deprecated (as in TransformerLens): :meth:`add_caching_hooks` for the hook points ``names`` selects."""
        warnings.warn("cache_some is deprecated; use run_with_cache or add_caching_hooks", DeprecationWarning, 2)
        self.add_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache)
