"""Starting a script's process: in bubblewrap (or, when the operator asks, without it), with limits.

A run is ``python -I -m bff.scripts.runner`` in a child process:

* **bubblewrap** gives it new namespaces of every kind (so an empty network namespace: no
  TCP, no UDP, no abstract Unix sockets), a root made of read-only binds of the system
  (``/usr``) and of this Python and its packages only, an empty private ``/tmp`` of limited
  size, its own ``/proc`` (it sees only its own processes) and no capabilities. The data
  directory is never bound (and is covered by an empty tmpfs should it lie inside a bound
  path). The one way out is the Unix socket of :mod:`bff.scripts.api_socket`, bound at
  ``/run/bff/api.sock``.
* **rlimits** (CPU seconds, address space, processes, open files, file size) are set in the
  child before bubblewrap starts and hold for everything it starts. When the BFF runs as
  root the child also switches to an unprivileged user id of its own (``RUN_UID_BASE`` + a
  slot), so the process limit counts only that run's processes.
* the environment is built from nothing: no ``BFF_*`` variable reaches bubblewrap, let alone
  the script; the run's token and code arrive on stdin.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import shutil
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

from ..settings import Settings

SOCKET_IN_SANDBOX = "/run/bff/api.sock"
RUN_UID_BASE = 200_000
RUN_UID_SLOTS = 50_000
TMP_SIZE_BYTES = 64 * 1024 * 1024
MAX_OPEN_FILES = 256
MAX_FILE_BYTES = 64 * 1024 * 1024
# What the runner imports; bound when it lives outside the Python prefixes (editable installs).
RUNNER_PACKAGES = ("bff", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio")
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclasses.dataclass(frozen=True)
class Limits:
    cpu_seconds: int
    memory_mb: int
    max_processes: int
    max_output_bytes: int
    timeout_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            cpu_seconds=settings.script_cpu_seconds,
            memory_mb=settings.script_memory_mb,
            max_processes=settings.script_max_processes,
            max_output_bytes=settings.script_max_output_bytes,
            timeout_seconds=settings.script_timeout_seconds,
        )

    def apply(self) -> None:
        """Runs in the child between fork and exec: system calls only."""
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 1))
        memory = self.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_NPROC, (self.max_processes, self.max_processes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@dataclasses.dataclass(frozen=True)
class Mode:
    """How this process runs scripts: ``sandboxed`` (bubblewrap), ``unsandboxed`` or ``off``."""

    name: str
    bwrap: str | None = None
    reason: str = ""

    @property
    def enabled(self) -> bool:
        return self.name != "off"

    def describe(self) -> str:
        if self.name == "sandboxed":
            return f"scripts run sandboxed in bubblewrap ({self.bwrap})"
        if self.name == "unsandboxed":
            return "scripts run UNSANDBOXED (BFF_SCRIPTS=unsandboxed): only for trusted code on a development machine"
        return f"scripts are off: {self.reason}"


class ScriptModeError(RuntimeError):
    """BFF_SCRIPTS=sandboxed on a machine without bubblewrap."""


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def resolve_mode(setting: str) -> Mode:
    if setting == "off":
        return Mode("off", reason="BFF_SCRIPTS=off.")
    if setting == "unsandboxed":
        return Mode("unsandboxed")
    bwrap = find_bwrap()
    if bwrap is not None:
        return Mode("sandboxed", bwrap=bwrap)
    if setting == "sandboxed":
        raise ScriptModeError(
            "BFF_SCRIPTS=sandboxed, but bubblewrap (`bwrap`) is not installed: `apt-get install bubblewrap`."
        )
    return Mode(
        "off",
        reason="bubblewrap (`bwrap`) is not installed. Install it (`apt-get install bubblewrap`), or set "
        "BFF_SCRIPTS=unsandboxed to run scripts without isolation (trusted code only).",
    )


def clean_environment(home: str) -> dict[str, str]:
    """Everything a script's process inherits: nothing from ours."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}


def _is_within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


@functools.cache
def _python_roots() -> tuple[Path, ...]:
    """The directories this Python and the runner's packages live in (read-only binds); fixed for
    the life of the process, so found once, not on every run."""
    roots: list[Path] = []
    candidates = [sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    for candidate in candidates:
        path = Path(candidate).resolve()
        if path.is_dir() and path != Path("/") and not _is_within(path, roots):
            roots.append(path)
    for package in RUNNER_PACKAGES:
        spec = find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            path = Path(location).resolve()
            if not _is_within(path, roots):
                roots.append(path)
    return tuple(roots)


def bwrap_command(bwrap: str, *, socket_path: str, hidden: list[Path]) -> list[str]:
    """The bubblewrap command line around ``python -I -m bff.scripts.runner``."""
    argv = [
        bwrap,
        "--unshare-all",  # network, IPC, PID, UTS, cgroup and user namespaces of its own
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "bff-script",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for link in SYSTEM_LINKS:
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
    roots = _python_roots()
    for root in roots:
        if not _is_within(root, [Path("/usr")]):
            argv += ["--ro-bind", str(root), str(root)]
    # Should the data directory (keys, database socket) sit inside a bound path, cover it.
    for path in hidden:
        resolved = path.resolve()
        if _is_within(resolved, [*roots, Path("/usr")]):
            argv += ["--tmpfs", str(resolved)]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(TMP_SIZE_BYTES),
        "--tmpfs",
        "/tmp",
        "--dir",
        "/run/bff",
        "--bind",
        socket_path,
        SOCKET_IN_SANDBOX,
        "--chdir",
        "/tmp",
        "--clearenv",
    ]
    for key, value in clean_environment("/tmp").items():
        argv += ["--setenv", key, value]
    argv += ["--", sys.executable, "-I", "-m", "bff.scripts.runner"]
    return argv


def unsandboxed_command() -> list[str]:
    return [sys.executable, "-I", "-m", "bff.scripts.runner"]


def run_user(run_id: int) -> int | None:
    """An unprivileged user id for this run when we are root (None: keep our own)."""
    if os.geteuid() != 0:
        return None
    return RUN_UID_BASE + run_id % RUN_UID_SLOTS


def preexec(limits: Limits) -> Callable[[], None]:
    return limits.apply
