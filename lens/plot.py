"""Moved to :mod:`lens.tools.plot`; ``lens.plot`` stays importable as the same module object."""

import sys

from lens.tools import plot as _module

sys.modules[__name__] = _module
