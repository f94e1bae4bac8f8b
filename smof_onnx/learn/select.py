"""Moved to :mod:`smof_onnx.selection.select` (torch-free); this name stays for the callers that
still import it from here."""
from __future__ import annotations

from ..selection.select import *  # noqa: F401,F403
from ..selection.select import __all__  # noqa: F401
