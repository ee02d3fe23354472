"""How the exporter notices that a file it follows (manifest, web config, fixture) has changed."""

from __future__ import annotations

import os
from pathlib import Path


def file_stamp(path: Path | str) -> tuple[int, int] | None:
    """(modification time in ns, size), or None when the file cannot be read right now. Replacing a
    file by rename, as editors and ConfigMap updates do, changes it too."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
