"""Moved to :mod:`lens.analysis.cache`; ``lens.cache`` stays importable as the same module object."""

import sys

from lens.analysis import cache as _module

sys.modules[__name__] = _module
