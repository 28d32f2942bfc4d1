"""Process-wide environment defaults, applied by entry points (the `mwp` command, the tests) and never at import.

Setting them at import time changed the environment of any program that merely imported `mwp`.
"""

from __future__ import annotations

import os

DEFAULTS = {
    # The fast tokenizers' thread pool deadlocks (and warns) once a DataLoader forks workers.
    "TOKENIZERS_PARALLELISM": "false",
}


def set_env_defaults() -> None:
    """Set each of `DEFAULTS` unless the user has set it already."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
