"""Small filesystem helpers for crash safety.

Rules: a file's contents are durable after fsync of the file; its name (creation, rename) only
after fsync of the directory holding it. Every writer of a new file here does both.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
