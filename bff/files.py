"""The data directory is owner-only: the store, warehouses, keys and the PostgreSQL cluster live there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
# PostgreSQL manages its own cluster's modes (initdb: 0700/0600) and may run as another user.
SELF_MANAGED = frozenset({"postgres"})


def secure_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` owner-only, take group/other bits off what is already in it, and make
    files this process creates from now on owner-only too (the umask only ever gets stricter)."""
    previous = os.umask(0o077)
    os.umask(previous | 0o077)
    data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    _restrict(data_dir)
    for root, dirs, files in os.walk(data_dir):
        if Path(root) == data_dir:
            dirs[:] = [name for name in dirs if name not in SELF_MANAGED]
        for name in dirs:
            _restrict(Path(root) / name)
        for name in files:
            _restrict(Path(root) / name)


def _restrict(path: Path) -> None:
    """Take the group and other bits off (0644 → 0600, 0755 → 0700)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        return  # never follow links out of the directory; leave other users' files to them
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(stat.S_IMODE(info.st_mode) & 0o700)
