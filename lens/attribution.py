"""Moved to :mod:`lens.tools.attribution`; ``lens.attribution`` stays importable as the same module object."""

import sys

from lens.tools import attribution as _module

sys.modules[__name__] = _module
