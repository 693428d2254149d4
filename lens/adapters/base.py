"""Moved to :mod:`lens.families.base`; ``lens.adapters.base`` stays importable as the same module object."""

import sys

from lens.families import base as _module

sys.modules[__name__] = _module
