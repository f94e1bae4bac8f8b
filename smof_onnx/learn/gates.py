"""Moved to :mod:`smof_onnx.selection.gates` (torch-free); this name stays for the callers that
still import it from here."""
from __future__ import annotations

from ..selection.gates import *  # noqa: F401,F403
from ..selection.gates import __all__  # noqa: F401
