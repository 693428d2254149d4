"""Moved to :mod:`lens.tools.patching`; ``lens.patching`` stays importable as the same module object."""

import sys

from lens.tools import patching as _module

sys.modules[__name__] = _module
