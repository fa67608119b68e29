"""Starting a script's process: in bubblewrap (or, when the operator asks, without it), with limits.

A run is ``python -I`` running :mod:`bff.scripts.runner` in a child process:

* **bubblewrap** gives it new namespaces of every kind (so an empty network namespace: no
  TCP, no UDP, no abstract Unix sockets) and no nested user namespaces, a read-only root made
  of read-only binds of the system (``/usr``) and of this Python and its packages only, sized
  tmpfs mounts as its only writable places (``/tmp``, ``/dev/shm``), its own ``/proc`` (it sees
  only its own processes; the runner is pid 1) and no capabilities. The data directory is never
  bound (and is covered should it lie inside a bound path). The one way out is the Unix socket
  of :mod:`bff.scripts.api_socket`, bound at ``/run/bff/api.sock``. As root, an outer
  bubblewrap builds what the run may see and drops to the run's own user id (``RUN_UID_BASE`` +
  a slot) before the sandbox proper starts (see :func:`bwrap_command`).
* **limits**: a control group per run where the host offers one (:mod:`bff.scripts.cgroups`:
  memory, processes and CPU time for the run as a whole), and rlimits set in the child before
  bubblewrap starts (per process; the only limits where there is no control group).
* the environment is built from nothing: no ``BFF_*`` variable reaches bubblewrap, let alone
  the script; the run's token and code arrive on stdin.

Every process that runs scripts proves the sandbox once with a trial run (:func:`prove`) and
says what it found (:meth:`Mode.describe`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

from ..settings import Settings
from . import cgroups
from .cgroups import Host

SOCKET_IN_SANDBOX = "/run/bff/api.sock"
READY = b"ready"  # what the runner writes (then closes) once set up, before the script's code runs
RUN_UID_BASE = 200_000
RUN_UID_SLOTS = 50_000
TMP_SIZE_BYTES = 48 * 1024 * 1024
SHM_SIZE_BYTES = 16 * 1024 * 1024  # with /tmp: 64 MB of writable space for a run in all
MAX_OPEN_FILES = 256
MAX_FILE_BYTES = 64 * 1024 * 1024
# What the runner imports; bound when it lives outside the Python prefixes (editable installs).
RUNNER_PACKAGES = ("bff", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio")
# Importable by every script (the source documents' scripts use them); BFF_SCRIPT_PACKAGES adds more.
SCRIPT_PACKAGES = ("pytz", "dateutil", "six")
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

    def apply(self, join: tuple[str, ...] = (), *, per_run: bool = False) -> None:
        """Runs in the child between fork and exec: system calls only. ``join`` are the run's
        control-group ``cgroup.procs`` files (written first, so everything started after counts)."""
        pid = str(os.getpid()).encode()
        for procs in join:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 1))
        if not per_run:  # with a control group, memory is counted for the run as a whole instead
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
    cgroups: Host | None = None

    @property
    def enabled(self) -> bool:
        return self.name != "off"

    def describe(self) -> str:
        if self.cgroups is not None:
            limits = f"limits hold for each run as a whole ({self.cgroups.describe()})"
        else:
            limits = "limits hold per process (no control group this process may create)"
        if self.name == "sandboxed":
            return f"scripts run sandboxed in bubblewrap ({self.bwrap}; a trial run worked); {limits}"
        if self.name == "unsandboxed":
            return (
                "scripts run UNSANDBOXED (BFF_SCRIPTS=unsandboxed): only for trusted code on a development machine;"
                f" {limits}"
            )
        return f"scripts are off: {self.reason}"


class ScriptModeError(RuntimeError):
    """BFF_SCRIPTS=sandboxed on a machine where the sandbox cannot run."""


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def resolve_mode(setting: str) -> Mode:
    """The mode this process runs scripts in, proven: a sandbox counts only once a trial run in
    it worked (found once per process)."""
    if setting == "off":
        return Mode("off", reason="BFF_SCRIPTS=off.")
    groups = cgroups.detect()
    if setting == "unsandboxed":
        return Mode("unsandboxed", cgroups=groups)
    bwrap = find_bwrap()
    if bwrap is None:
        if setting == "sandboxed":
            raise ScriptModeError(
                "BFF_SCRIPTS=sandboxed, but bubblewrap (`bwrap`) is not installed: `apt-get install bubblewrap`."
            )
        return Mode(
            "off",
            reason="bubblewrap (`bwrap`) is not installed. Install it (`apt-get install bubblewrap`), or set "
            "BFF_SCRIPTS=unsandboxed to run scripts without isolation (trusted code only).",
        )
    failure = prove(bwrap)
    if failure is None:
        return Mode("sandboxed", bwrap=bwrap, cgroups=groups)
    if setting == "sandboxed":
        raise ScriptModeError(f"BFF_SCRIPTS=sandboxed, but a trial run in bubblewrap failed: {failure}")
    return Mode(
        "off",
        reason=f"a trial run in bubblewrap failed: {failure} Fix that (see the README's scripts section), or set "
        "BFF_SCRIPTS=unsandboxed to run scripts without isolation (trusted code only).",
    )


PROBE_UID = RUN_UID_BASE + RUN_UID_SLOTS  # beyond every run's own user id


@functools.cache
def prove(bwrap: str) -> str | None:
    """Run one trivial script in the sandbox, as a run would be started; None when it worked,
    else what went wrong in one line. Once per process (and per bubblewrap)."""
    with tempfile.TemporaryDirectory(prefix="bff-probe-") as scratch:
        os.chmod(scratch, 0o711)
        socket_path = os.path.join(scratch, "api.sock")
        with open(socket_path, "w"):
            pass
        os.chmod(socket_path, 0o666)
        run_uid = PROBE_UID if os.geteuid() == 0 else None
        argv = bwrap_command(bwrap, socket_path=socket_path, hidden=[], run_uid=run_uid)
        read_fd, write_fd = os.pipe()
        config = {
            "code": "print('sandbox ok')",
            "name": "trial",
            "token": "-",
            "script_id": 0,
            "run_id": 0,
            "socket": SOCKET_IN_SANDBOX,
            "ready_fd": write_fd,
        }
        limits = Limits(cpu_seconds=30, memory_mb=512, max_processes=64, max_output_bytes=65536, timeout_seconds=30)
        try:
            done = subprocess.run(
                argv,
                input=json.dumps(config).encode(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=clean_environment("/tmp"),
                cwd="/",
                pass_fds=(write_fd,),
                preexec_fn=limits.apply,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"could not start bubblewrap ({exc})."
        finally:
            os.close(write_fd)
        with os.fdopen(read_fd, "rb") as ready:
            started = ready.read() == READY
    output = done.stdout.decode("utf-8", "replace").strip()
    if done.returncode == 0 and started and output == "sandbox ok":
        return None
    lines = output.splitlines()
    # bubblewrap's own complaint is its first line; a Python traceback's point is its last.
    line = (lines[-1] if lines[0].startswith("Traceback") else lines[0]) if lines else f"exit code {done.returncode}"
    return f"{line.strip().rstrip('.')[:300]}."


def clean_environment(home: str) -> dict[str, str]:
    """Everything a script's process inherits: nothing from ours."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}


def _is_within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _locations(package: str) -> list[Path]:
    """Where an importable package (its directories) or module (its file) lives; [] if nowhere."""
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(location).resolve() for location in spec.submodule_search_locations]
    return [Path(spec.origin).resolve()] if spec.origin and os.path.isfile(spec.origin) else []


def missing_packages(packages: tuple[str, ...]) -> list[str]:
    """Which of ``packages`` (BFF_SCRIPT_PACKAGES) this Python cannot import."""
    return [package for package in packages if not _locations(package)]


@functools.cache
def _python_roots(packages: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """The directories this Python and the runner's and scripts' packages live in (read-only
    binds); fixed for the life of the process, so found once, not on every run."""
    roots: list[Path] = []
    candidates = [sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    for candidate in candidates:
        path = Path(candidate).resolve()
        if path.is_dir() and path != Path("/") and not _is_within(path, roots):
            roots.append(path)
    for package in (*RUNNER_PACKAGES, *SCRIPT_PACKAGES, *packages):
        for path in _locations(package):
            if not _is_within(path, roots):
                roots.append(path)
    return tuple(roots)


def _system_binds() -> list[str]:
    argv = ["--ro-bind", "/usr", "/usr"]
    for link in SYSTEM_LINKS:
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
    return argv


def _reachable_dirs(paths: list[Path]) -> list[str]:
    """``--dir`` (mode 0755) for every ancestor of ``paths``: bubblewrap would otherwise copy the
    mode of the host's directories (a 0700 home) and the run's user could not walk through them."""
    argv: list[str] = []
    made: set[Path] = {Path("/")}
    for path in paths:
        for ancestor in reversed(path.parents):
            if ancestor not in made:
                made.add(ancestor)
                argv += ["--perms", "0755", "--dir", str(ancestor)]
    return argv


def bwrap_command(
    bwrap: str,
    *,
    socket_path: str | None,
    hidden: list[Path],
    run_uid: int | None = None,
    packages: tuple[str, ...] = (),
) -> list[str]:
    """The bubblewrap command line around ``python -I -m bff.scripts.runner``.

    The sandbox itself (the "inner" bubblewrap) runs as an unprivileged user: ours, or, when we
    are root, the run's own user id (``run_uid``). Such a user cannot reach a Python installed
    under a ``0700`` home (pyenv's under root's), so as root an "outer" bubblewrap, still root,
    first builds a mount namespace holding only the system, the Python roots and the socket,
    with world-walkable directories above them; it then drops to the run's user (``setpriv``)
    and starts the inner one, which binds from there. Nothing of the host is opened up.
    """
    roots = [root for root in _python_roots(packages) if not _is_within(root, [Path("/usr")])]
    argv = [
        bwrap,
        "--unshare-all",  # network, IPC, PID, UTS, cgroup and user namespaces of its own
        "--unshare-user",
        "--disable-userns",  # no nested user namespace: no mounts of its own, no capabilities
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",  # the runner is pid 1: no bubblewrap process in there to trace or read
        "--cap-drop",
        "ALL",
        "--hostname",
        "bff-script",
        *_system_binds(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # Every writable place is a sized tmpfs; together they are the run's disk budget.
        "--size",
        str(TMP_SIZE_BYTES),
        "--tmpfs",
        "/tmp",
        "--size",
        str(SHM_SIZE_BYTES),
        "--tmpfs",
        "/dev/shm",
    ]
    # After /tmp, so a Python (or a venv) under /tmp is not hidden by the empty one.
    for root in roots:
        argv += ["--ro-bind", str(root), str(root)]
    # Should the data directory (keys, database socket) sit inside a bound path, cover it.
    for path in hidden:
        resolved = path.resolve()
        if _is_within(resolved, [*roots, Path("/usr")]):
            argv += ["--size", "4096", "--tmpfs", str(resolved), "--remount-ro", str(resolved)]
    argv += ["--dir", "/run/bff"]
    if socket_path is not None:
        argv += ["--bind", socket_path, SOCKET_IN_SANDBOX]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    for key, value in clean_environment("/tmp").items():
        argv += ["--setenv", key, value]
    argv += ["--", *runner_command(packages)]
    if run_uid is None:
        return argv
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    reach = [*roots, *([Path(socket_path)] if socket_path is not None else [])]
    outer = [
        bwrap,
        "--die-with-parent",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CAP_SETUID",
        "--cap-add",
        "CAP_SETGID",
        *_system_binds(),
        # The host's /proc (writable: the inner bubblewrap writes its uid map there); the inner
        # one mounts a fresh /proc of its own and leaves this behind.
        "--bind",
        "/proc",
        "/proc",
        "--dev",
        "/dev",
        "--dir",
        "/tmp",  # where the inner bubblewrap builds its root
        *_reachable_dirs(reach),
    ]
    for root in roots:
        outer += ["--ro-bind", str(root), str(root)]
    if socket_path is not None:
        outer += ["--bind", socket_path, socket_path]
    for path in hidden:  # the same cover one level up: the inner one never sees what is under it
        resolved = path.resolve()
        if _is_within(resolved, roots):
            outer += ["--tmpfs", str(resolved), "--remount-ro", str(resolved)]
    if not _is_within(Path(bwrap).resolve(), [Path("/usr")]):  # a bubblewrap of its own: the inner one needs it
        outer += [*_reachable_dirs([Path(bwrap)]), "--ro-bind", bwrap, bwrap]
    outer += ["--", setpriv, f"--reuid={run_uid}", f"--regid={run_uid}", "--clear-groups", "--", *argv]
    return outer


@functools.cache
def _package_parents(packages: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The directories the runner's and scripts' packages are imported from (a checkout, a
    PYTHONPATH entry): ``python -I`` would not look there by itself."""
    parents: list[str] = []
    for package in (*RUNNER_PACKAGES, *SCRIPT_PACKAGES, *packages):
        for location in _locations(package):
            parent = str(location.parent)
            if parent not in parents:
                parents.append(parent)
    return tuple(parents)


def runner_command(packages: tuple[str, ...] = ()) -> list[str]:
    """``python -I`` running :mod:`bff.scripts.runner`, importing from where this process does."""
    boot = (
        f"import sys; sys.path[:0] = {list(_package_parents(packages))!r}; import runpy; "
        "runpy.run_module('bff.scripts.runner', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-I", "-c", boot]


def unsandboxed_command(packages: tuple[str, ...] = ()) -> list[str]:
    return runner_command(packages)


class RunUser:
    """A user id held by one run on this host, or ``uid`` None (not root: the run keeps ours).

    Run ids are only unique within one control database, and a run's end kills every process of
    its user id: two installs on one host (a staging and a live BFF, a test suite beside
    ``bff demo``) must never share one while both run. So the id is leased: an exclusive
    ``flock`` on a file named after it in a host-wide folder, held until :meth:`release` (the
    kernel drops it if this process dies, so a lease never outlives its holder)."""

    def __init__(self, uid: int | None, fd: int | None = None) -> None:
        self.uid = uid
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lease_folder() -> str:
    for folder in ("/run/bff-run-users", os.path.join(tempfile.gettempdir(), "bff-run-users")):
        with contextlib.suppress(OSError):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
    raise OSError("no folder for run user leases (/run or the temporary directory)")


def run_user(run_id: int) -> int | None:
    """The user id a run asks for first when we are root (None: keep our own); see :func:`lease_run_user`."""
    if os.geteuid() != 0:
        return None
    return RUN_UID_BASE + run_id % RUN_UID_SLOTS


def lease_run_user(run_id: int) -> RunUser:
    """An unprivileged user id for this run when we are root, no other run on this host holding it
    (the run id's own slot first, then the next free one)."""
    if os.geteuid() != 0:
        return RunUser(None)
    folder = _lease_folder()
    for step in range(RUN_UID_SLOTS):
        uid = RUN_UID_BASE + (run_id + step) % RUN_UID_SLOTS
        fd = os.open(os.path.join(folder, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return RunUser(uid, fd)
    raise OSError(f"all {RUN_UID_SLOTS} run user ids are in use on this host")


def preexec(limits: Limits, join: tuple[str, ...] = ()) -> Callable[[], None]:
    return functools.partial(limits.apply, join, per_run=bool(join))
