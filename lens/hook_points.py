"""TransformerLens's module path for hook points: ``lens.hook_points`` is :mod:`lens.hooks` (the same module object).

So ``from transformer_lens.hook_points import HookPoint, HookedRootModule`` becomes
``from lens.hook_points import HookPoint, HookedRootModule``.
"""

import sys

from lens import hooks as _module

sys.modules[__name__] = _module
