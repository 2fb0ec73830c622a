"""Opening files where someone else might have planted a symlink.

A folder another user can write to (or could, before it was checked) may hold a symlink in
place of the file the router means to open, and have the router, perhaps root, write through
it to any file. Files there are opened refusing a symlink, and close-on-exec so no child
inherits them.
"""

from __future__ import annotations

import os
from pathlib import Path


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open ``path`` refusing a symlink in its place (OSError ELOOP); return the fd."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
