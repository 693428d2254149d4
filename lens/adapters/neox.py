"""Moved to :mod:`lens.families.neox`; ``lens.adapters.neox`` stays importable as the same module object."""

import sys

from lens.families import neox as _module

sys.modules[__name__] = _module
