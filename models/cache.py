"""Where the zoo exports and the downloaded PP-OCR models are cached (torch-free on purpose,
so loading the real models never pays for importing torch)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SMOF_CACHE`` if set, else ``~/.cache/smof-onnx``."""
    env = os.environ.get("SMOF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "smof-onnx"
