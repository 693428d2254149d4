"""Moved to :mod:`lens.families.gemma`; ``lens.adapters.gemma`` stays importable as the same module object."""

import sys

from lens.families import gemma as _module

sys.modules[__name__] = _module
