"""Moved to :mod:`lens.families.llama`; ``lens.adapters.llama`` stays importable as the same module object."""

import sys

from lens.families import llama as _module

sys.modules[__name__] = _module
