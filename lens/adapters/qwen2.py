"""Moved to :mod:`lens.families.qwen2`; ``lens.adapters.qwen2`` stays importable as the same module object."""

import sys

from lens.families import qwen2 as _module

sys.modules[__name__] = _module
