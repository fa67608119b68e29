"""Limits for a script run as a whole: a control group per run, made and removed by the worker.

rlimits hold per process: five forked children of 400 MB each stay under a 512 MB ``RLIMIT_AS``
and together use 2 GB. A control group counts every process of the run together: its memory
(tmpfs pages written by the run included), its processes, its CPU time. The worker creates one
per run under its own group, the run's first process joins it before anything else starts, and
the worker reads the group's counters to say why a run ended (the script cannot write them) and
kills what is left in it at the end.

Two layouts are understood:

* **cgroup v2** (one hierarchy): a child of the worker's own group with ``memory.max``,
  ``pids.max`` and ``cpu.stat``; needs the controllers delegated to the worker's group.
* **cgroup v1** (a hierarchy per controller, as on our machines): ``memory``, ``pids`` and
  ``cpuacct`` groups under the worker's own place in each.

Where neither can be written (a non-root BFF without delegation, say), :func:`detect` answers
None and the limits stay per process; the start-up banner says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import secrets
import signal
import time
from pathlib import Path

V1_CONTROLLERS = ("memory", "pids", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")


@dataclasses.dataclass(frozen=True)
class RunGroup:
    """One run's control group (one directory per hierarchy)."""

    version: int
    dirs: dict[str, Path]  # controller (or "unified") → the run's directory

    @property
    def procs_files(self) -> list[str]:
        """Where the run's first process writes its pid (every hierarchy it must join)."""
        return sorted({str(path / "cgroup.procs") for path in self.dirs.values()})

    def _read(self, controller: str, name: str) -> str:
        try:
            return (self.dirs[controller] / name).read_text()
        except (OSError, KeyError):
            return ""

    def _keyed(self, controller: str, name: str) -> dict[str, int]:
        values: dict[str, int] = {}
        for line in self._read(controller, name).splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[key] = int(value)
        return values

    def cpu_seconds(self) -> float:
        """CPU time used by every process of the run so far (user + system)."""
        if self.version == 2:
            return self._keyed("unified", "cpu.stat").get("usage_usec", 0) / 1e6
        raw = self._read("cpuacct", "cpuacct.usage").strip()
        return int(raw) / 1e9 if raw.isdigit() else 0.0

    def out_of_memory(self) -> bool:
        """Did the kernel kill a process of the run because the run used all its memory?"""
        if self.version == 2:
            events = self._keyed("unified", "memory.events")
            return events.get("oom_kill", 0) > 0 or events.get("oom", 0) > 0
        control = self._keyed("memory", "memory.oom_control")
        if "oom_kill" in control:
            return control["oom_kill"] > 0 or control.get("under_oom", 0) > 0
        return int(self._read("memory", "memory.failcnt").strip() or 0) > 0  # kernels before 4.13

    def hit_process_limit(self) -> bool:
        """Was a fork refused because the run had as many processes as it may?"""
        controller = "unified" if self.version == 2 else "pids"
        return self._keyed(controller, "pids.events").get("max", 0) > 0

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs.values():
            with contextlib.suppress(OSError):
                found.update(int(line) for line in (path / "cgroup.procs").read_text().split())
        return found

    def kill_all(self, *, timeout: float = 5.0) -> None:
        """SIGKILL every process in the run's group until none is left (forks in flight included)."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids()
            if not left or time.monotonic() > deadline:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill_all()
        for path in self.dirs.values():
            for _ in range(250):  # a killed process leaves its group a moment after it dies (5 s at most)
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


@dataclasses.dataclass(frozen=True)
class Host:
    """Where this process may make run groups: one parent directory per hierarchy."""

    version: int
    parents: dict[str, Path]

    def describe(self) -> str:
        return f"cgroup v{self.version}"

    def remove_stale(self) -> None:
        """Remove run groups left behind by a worker that is gone. Their names carry the pid of
        the process that made them; another live process's groups are never touched."""
        for parent in self.parents.values():
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    if child.is_dir() and _maker_gone(child.name):
                        with contextlib.suppress(OSError):
                            child.rmdir()  # only an empty group can go

    def create(self, name: str, *, memory_mb: int, max_processes: int) -> RunGroup:
        dirs: dict[str, Path] = {}
        try:
            for controller, parent in self.parents.items():
                path = parent / name
                path.mkdir()  # new: a group left from an earlier run would bring its counters along
                dirs[controller] = path
            group = RunGroup(self.version, dirs)
            memory = str(memory_mb * 1024 * 1024)
            if self.version == 2:
                _write(dirs["unified"] / "memory.max", memory)
                with contextlib.suppress(OSError):  # no swap accounting: nothing to limit there
                    _write(dirs["unified"] / "memory.swap.max", "0")
                _write(dirs["unified"] / "pids.max", str(max_processes))
            else:
                _write(dirs["memory"] / "memory.limit_in_bytes", memory)
                with contextlib.suppress(OSError):
                    _write(dirs["memory"] / "memory.memsw.limit_in_bytes", memory)
                _write(dirs["pids"] / "pids.max", str(max_processes))
        except OSError:
            RunGroup(self.version, dirs).remove()
            raise
        return group


def _maker_gone(name: str) -> bool:
    """``run-<run>-<pid>-<hex>`` / ``probe-<pid>-<hex>``: is that pid no longer running?"""
    parts = name.split("-")
    if parts[0] == "run" and len(parts) == 4:
        pid = parts[2]
    elif parts[0] == "probe" and len(parts) == 3:
        pid = parts[1]
    else:
        return False
    return pid.isdigit() and not os.path.exists(f"/proc/{pid}")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _own_groups() -> dict[str, str]:
    """This process's place in each hierarchy, from /proc/self/cgroup ("" = the v2 one)."""
    places: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                places[controller] = path
    return places


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, file system type, options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                found.append((parts[1], parts[2], set(parts[3].split(","))))
    return found


def _v1_parents(base: str) -> dict[str, Path] | None:
    places = _own_groups()
    parents: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        mount = next((m for m, kind, opts in _mounts() if kind == "cgroup" and controller in opts), None)
        if mount is None or controller not in places:
            return None
        parents[controller] = Path(mount) / places[controller].lstrip("/") / base
    return parents


def _v2_parents(base: str) -> dict[str, Path] | None:
    mount = next((m for m, kind, _ in _mounts() if kind == "cgroup2"), None)
    place = _own_groups().get("")
    if mount is None or place is None:
        return None
    own = Path(mount) / place.lstrip("/")
    try:
        available = set((own / "cgroup.controllers").read_text().split())
    except OSError:
        return None
    if not set(V2_CONTROLLERS) <= available:
        return None
    return {"unified": own / base}


@functools.cache
def detect(base: str = "bff-scripts") -> Host | None:
    """A place this process can make run groups with every controller it needs, or None.

    Tried for real: the parent is made (and kept: runs are made inside it), a trial run group is
    created with limits and removed."""
    candidates: list[tuple[int, dict[str, Path] | None]] = [(1, _v1_parents(base)), (2, _v2_parents(base))]
    for version, parents in candidates:
        if not parents:
            continue
        try:
            for parent in parents.values():
                parent.mkdir(exist_ok=True)
                if version == 2:
                    wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS)
                    _write(parent.parent / "cgroup.subtree_control", wanted)
                    _write(parent / "cgroup.subtree_control", wanted)
            host = Host(version, parents)
            host.remove_stale()
            host.create(f"probe-{os.getpid()}-{secrets.token_hex(4)}", memory_mb=64, max_processes=4).remove()
        except OSError:
            continue
        return host
    return None
