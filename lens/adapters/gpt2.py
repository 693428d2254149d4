"""Moved to :mod:`lens.families.gpt2`; ``lens.adapters.gpt2`` stays importable as the same module object."""

import sys

from lens.families import gpt2 as _module

sys.modules[__name__] = _module
