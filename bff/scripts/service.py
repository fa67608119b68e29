"""Scripts: saving them, queueing their runs, and running them inside a worker (DESIGN §14).

A run is a ``bff:script_run`` job (queueing lock ``script-{id}``; the ``script_runs`` table's
unique index is the second guard: never two runs of one script at once). The worker that takes
it marks it running, mints an identity token that works only while this run is ``running``,
starts the process (:mod:`bff.scripts.sandbox`) and watches it: the wall-clock limit, the output
limit (the last 64 KB are kept), and whether the run still exists — deleting the script deletes
its runs, and the worker then kills the process within half a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from ..events import Events
from ..jobs import JobQueue
from ..runtime import Runtime
from ..store import UNSET, Unset
from ..store.scripts import CustomerBusy, Script, ScriptRun, ScriptRunActive, ScriptStore
from .api_socket import ApiSocket
from .cgroups import RunGroup
from .sandbox import (
    READY,
    SOCKET_IN_SANDBOX,
    Limits,
    Mode,
    ScriptModeError,
    bwrap_command,
    clean_environment,
    lease_run_user,
    missing_packages,
    preexec,
    resolve_mode,
    unsandboxed_command,
)

logger = logging.getLogger("bff.scripts")

OUTPUT_KEPT_BYTES = 64 * 1024
MAX_CODE_BYTES = 256 * 1024
MIN_SCHEDULE = 60
MAX_SCHEDULE = 366 * 24 * 3600
BUSY_RETRY_SECONDS = 1.0  # how soon a run whose customer had no free slot is tried again
WATCH_SECONDS = 0.5  # how often a running script's row is checked (deleted → stop it)
READ_CHUNK = 65536
SIGXCPU = int(getattr(signal, "SIGXCPU", 24))


class ScriptsUnavailable(Exception):
    def __init__(self, mode: Mode) -> None:
        super().__init__(mode.describe())
        self.mode = mode


class _Tail:
    """The last ``keep`` bytes of a stream, and how many there were in all."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > 2 * self.keep:
            del self.data[: len(self.data) - self.keep]

    def text(self) -> str:
        data = bytes(self.data[-self.keep :])
        text = data.decode("utf-8", "replace").replace("\x00", "\ufffd")
        if self.total > len(data):
            text = f"[… {self.total - len(data)} earlier bytes not kept …]\n" + text.lstrip("\ufffd")
        return text


class _Outcome:
    def __init__(self) -> None:
        self.stopped: str | None = None  # "timeout", "output", "cpu" or "deleted" when we ended it
        self.returncode: int | None = None
        self.ready = False  # the runner was set up before the script's code ran
        self.first_line = ""
        self.last_line = ""
        self.cpu_seconds = 0.0  # the run's control group's counters (0/False without one)
        self.out_of_memory = False
        self.hit_process_limit = False


class ScriptService:
    def __init__(self, runtime: Runtime, queue: JobQueue, events: Events) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.table = ScriptStore(runtime.store)
        self.queue = queue
        self.events = events
        self.limits = Limits.from_settings(runtime.settings)
        self.mode = resolve_mode(runtime.settings.scripts)
        self._packages = runtime.settings.script_packages
        missing = missing_packages(self._packages)
        if missing:
            raise ScriptModeError(
                f"BFF_SCRIPT_PACKAGES names {', '.join(missing)}, which this Python cannot import: install it"
                " where the BFF is installed (pip install …), or leave it out."
            )
        self._socket: ApiSocket | None = None
        self._hidden = [Path(runtime.settings.data_dir)]

    def serve_api(self, app: ASGIApp) -> None:
        """The app scripts reach over their socket (this process's own)."""
        self._socket = ApiSocket(app)

    @property
    def serving_api(self) -> bool:
        return self._socket is not None

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.stop()

    def now(self) -> float:
        return float(self.runtime.clock())

    # -- the customer's scripts, for /api/interface (the routes reach the table only through these) --

    async def create(self, sub_account_id: int, name: str, raw_code: str, schedule: int | None) -> Script:
        return await self.table.create(sub_account_id, name, raw_code, schedule)

    async def find(self, sub_account_id: int, script_id: int) -> Script | None:
        return await self.table.get(sub_account_id, script_id)

    async def page(self, sub_account_id: int, *, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """A page of scripts as the API shows them, each with its last run (one query for the page)."""
        count, found = await self.table.list_scripts(sub_account_id, offset=offset, limit=limit)
        last_runs = await self.table.last_runs([s.id for s in found])
        return count, [s.public_dict(last_runs.get(s.id)) for s in found]

    async def view(self, script: Script) -> dict[str, Any]:
        return script.public_dict(await self.table.last_run(script.id))

    async def change(
        self, script: Script, *, name: str | None, raw_code: str | None, schedule: int | None | Unset
    ) -> Script | None:
        """Change what was given (None: unchanged, but a schedule of None is "by hand only")."""
        return await self.table.update(
            script,
            name=UNSET if name is None else name,
            raw_code=UNSET if raw_code is None else raw_code,
            schedule=schedule,
        )

    async def delete(self, sub_account_id: int, script_id: int) -> bool:
        return await self.table.delete(sub_account_id, script_id)

    async def runs(self, script_id: int, *, offset: int, limit: int) -> tuple[int, list[ScriptRun]]:
        return await self.table.list_runs(script_id, offset=offset, limit=limit)

    async def run(self, run_id: int) -> ScriptRun | None:
        return await self.table.get_run(run_id)

    async def state(self, script_id: int) -> Any:
        return await self.table.get_state(script_id)

    async def save_state(self, script_id: int, state: Any) -> None:
        await self.table.set_state(script_id, state)

    # -- runs, from the API and the scheduler -----------------------------------------------------

    async def request_run(self, script: Script, *, trigger: str = "api") -> ScriptRun:
        """Queue a run; ScriptRunActive when one is queued or running already."""
        if not self.mode.enabled:
            raise ScriptsUnavailable(self.mode)
        run = await self.table.create_run(script, trigger)
        try:
            job_id = await self.queue.defer_script(run.id, script.id)
        except BaseException:
            await self.table.delete_run(run.id)
            raise
        if job_id is None:  # a job of this script still waits (its run row is active too)
            await self.table.delete_run(run.id)
            raise ScriptRunActive(None)
        await self.table.set_job(run.id, job_id)
        return run

    async def wait_run(self, run_id: int, *, timeout: float) -> ScriptRun | None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        run = await self.table.get_run(run_id)
        while run is not None and run.active and time.monotonic() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.25)
            run = await self.table.get_run(run_id)
        return run

    async def tick(self) -> list[ScriptRun]:
        """Queue a run of every script whose time has come (the scheduler tick's second half)."""
        now = self.now()
        queued = []
        for script in await self.table.due(now):
            assert script.schedule is not None and script.next_run_at is not None
            # The next run counts from the due time, so a schedule does not drift; one skipped
            # when late (a stopped server) is not made up.
            later = script.next_run_at + script.schedule
            if later <= now:
                later = now + script.schedule
            if not await self.table.claim(script, later):
                continue  # another worker's tick took it
            try:
                queued.append(await self.request_run(script, trigger="schedule"))
            except ScriptRunActive:
                logger.info("script %s is still running; its scheduled run is skipped", script.id)
            except (ScriptsUnavailable, LookupError):
                continue
        return queued

    # -- inside a worker ----------------------------------------------------------------------------

    async def execute(self, run_id: int) -> None:
        """The body of a ``bff:script_run`` job."""
        try:
            run = await self.table.start_run(run_id, per_customer=self.runtime.settings.scripts_per_customer)
        except CustomerBusy:
            await self._wait_for_a_slot(run_id)
            return
        if run is None:
            return  # deleted with its script, or taken already
        tail = _Tail(OUTPUT_KEPT_BYTES)
        try:
            await self._execute(run, tail)
        except asyncio.CancelledError:
            # This worker is shutting down (the process, if started, was killed on the way out):
            # the run must not stay "running" and block the script's next run.
            script = await self.table.get_by_id(run.script_id)
            if script is not None:
                stopped = "The worker was stopped while the script ran; run it again."
                await self._finish(script, run, "failed", None, tail.text(), stopped)
            raise

    async def _wait_for_a_slot(self, run_id: int) -> None:
        """The customer's other scripts hold its slots: queue this run again a little later (it
        stays ``queued``), so it does not hold a worker slot another customer could use."""
        run = await self.table.get_run(run_id)
        if run is None or run.status != "queued":
            return
        job_id = await self.queue.defer_script(run.id, run.script_id, at=time.time() + BUSY_RETRY_SECONDS)
        if job_id is not None:
            await self.table.set_job(run.id, job_id)

    async def _execute(self, run: ScriptRun, tail: _Tail) -> None:
        script = await self.table.get_by_id(run.script_id)
        account = await self.store.sub_accounts.get_by_id(run.sub_account_id)
        partner = await self.store.partners.get(account.partner_id) if account is not None else None
        if script is None or account is None or partner is None:
            return  # deleted meanwhile (its runs went with it)
        if not self.mode.enabled:
            await self._finish(script, run, "failed", None, "", f"Not run: {self.mode.describe()}")
            return
        token = self.runtime.tokens.mint_identity_token(
            partner_id=account.partner_id,
            sub_account_id=account.id,
            generation=account.token_generation,
            partner_generation=partner.token_generation,
            script_run_id=run.id,
        )
        assert self._socket is not None, "serve_api() was not called"
        socket_path = await self._socket.start()
        try:
            outcome = await self._run_process(script, run, token.token, socket_path, tail)
        except Exception as exc:
            logger.exception("script run %s could not start", run.id)
            await self._finish(script, run, "failed", None, tail.text(), f"The script could not be started: {exc}")
            return
        status, error = self._verdict(outcome)
        await self._finish(script, run, status, outcome.returncode, tail.text(), error)

    async def recover_stalled(self, run_id: int) -> None:
        """The worker running this script died: the run failed (a script is not re-run by itself)."""
        run = await self.table.get_run(run_id)
        if run is None or not run.active:
            return
        script = await self.table.get_by_id(run.script_id)
        logger.warning("script run %s: its worker stopped; marked failed", run_id)
        if script is not None:
            await self._finish(
                script, run, "failed", None, run.output, "The worker running this script stopped; run it again."
            )

    async def _finish(
        self, script: Script, run: ScriptRun, status: str, exit_code: int | None, output: str, error: str | None
    ) -> None:
        finished, written = await self.table.finish_run(
            run.id,
            status=status,
            exit_code=exit_code,
            output=output,
            error=error,
            outbox=lambda conn, ended: self.events.script_ending(conn, script, ended),
        )
        if finished is None:
            return  # the script was deleted meanwhile
        await self.table.prune_runs(script.id)
        logger.info("script %s run %s %s%s", script.id, run.id, status, f": {error}" if error else "")
        await self.events.script_ended(finished, written)

    def _verdict(self, outcome: _Outcome) -> tuple[str, str | None]:
        """Why a run ended, from facts the script cannot write: what the worker saw (time, output,
        deletion), the run's control group, whether the runner said it was ready before the
        script's code ran, the exit status. Text the script printed is only quoted as its own."""
        limits = self.limits
        if outcome.stopped == "timeout":
            return "failed", (
                f"Stopped after {limits.timeout_seconds:g} s: a run may take at most that long"
                " (BFF_SCRIPT_TIMEOUT_SECONDS)."
            )
        if outcome.stopped == "output":
            return "failed", (
                f"Stopped: the script printed more than {limits.max_output_bytes} bytes"
                " (BFF_SCRIPT_MAX_OUTPUT_BYTES); the last 64 KB are kept."
            )
        code = outcome.returncode
        if not outcome.ready:
            if code == 0:
                return "failed", "The sandbox could not be set up (it ended before the script started); it did not run."
            # bubblewrap itself failed (user namespaces turned off, say), or Python could not find
            # the runner in the sandbox: the script never ran, so this line is not the script's.
            line = outcome.first_line or f"exit code {code}"
            return "failed", f"The sandbox could not be set up ({line}); the script did not run."
        if outcome.stopped == "cpu" or outcome.cpu_seconds >= limits.cpu_seconds:
            return "failed", f"Stopped: the script used its {limits.cpu_seconds} s of CPU time."
        if outcome.out_of_memory:
            return "failed", (
                f"Stopped: the script ran out of memory (a run may use {limits.memory_mb} MB,"
                " all its processes together)."
            )
        if outcome.hit_process_limit and code != 0:
            return "failed", (
                f"Stopped: the script tried to start more processes than it may (a run may have at most"
                f" {limits.max_processes} processes at once)."
            )
        if code == 0:
            return "succeeded", None
        if code in (-SIGXCPU, 128 + SIGXCPU):
            return "failed", f"Stopped: the script used its {limits.cpu_seconds} s of CPU time."
        if code in (-signal.SIGKILL, 128 + signal.SIGKILL):
            return "failed", (
                f"Killed: the script went over a limit ({limits.cpu_seconds} s of CPU, {limits.memory_mb} MB of memory)."
            )
        if code is not None and code < 0:
            return "failed", f"The script was ended by signal {-code}."
        if code is not None and code > 128:
            return "failed", f"The script was ended by signal {code - 128}."
        raised = _exception_line(outcome.last_line)
        if code == 1 and raised is not None:
            if raised.startswith("MemoryError"):
                return "failed", (
                    f"The script raised {raised} (it could not get more memory: a script may use"
                    f" {limits.memory_mb} MB)."
                )
            if raised.startswith("BlockingIOError") and "Resource temporarily unavailable" in raised:
                return "failed", (
                    f"The script raised {raised} (a script may run at most {limits.max_processes} processes)."
                )
            return "failed", f"The script raised {raised}"
        return "failed", f"The script exited with code {code}."

    async def _run_process(self, script: Script, run: ScriptRun, token: str, socket_path: str, tail: _Tail) -> _Outcome:
        # A user id no other run on this host holds, until every process of this run is gone.
        lease = await asyncio.to_thread(lease_run_user, run.id)
        try:
            return await self._run_leased(script, run, token, socket_path, tail, lease.uid)
        finally:
            lease.release()

    async def _run_leased(
        self, script: Script, run: ScriptRun, token: str, socket_path: str, tail: _Tail, uid: int | None
    ) -> _Outcome:
        read_fd, write_fd = os.pipe()
        config: dict[str, Any] = {
            "code": script.raw_code,
            "name": script.name,
            "token": token,
            "script_id": script.id,
            "run_id": run.id,
            "ready_fd": write_fd,
        }
        if self.mode.name == "sandboxed":
            assert self.mode.bwrap is not None
            # As root, the outer bubblewrap drops to the run's user: the process starts as root.
            argv = bwrap_command(
                self.mode.bwrap, socket_path=socket_path, hidden=self._hidden, run_uid=uid, packages=self._packages
            )
            config["socket"] = SOCKET_IN_SANDBOX
            cwd = "/"
            home = "/tmp"
        else:
            # Trusted code only: it runs as this process's user (a run's own user could not reach a
            # Python under a 0700 home).
            argv = unsandboxed_command(self._packages)
            config["socket"] = socket_path
            home = cwd = os.path.dirname(socket_path)
        group = None
        if self.mode.cgroups is not None:
            group = await asyncio.to_thread(
                self.mode.cgroups.create,
                f"run-{run.id}-{os.getpid()}-{secrets.token_hex(4)}",
                memory_mb=self.limits.memory_mb,
                max_processes=self.limits.max_processes,
            )
        outcome = _Outcome()
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=clean_environment(home),
                cwd=cwd,
                pass_fds=(write_fd,),
                start_new_session=True,
                preexec_fn=preexec(self.limits, tuple(group.procs_files) if group is not None else ()),
            )
        )
        try:
            try:
                # Shielded: a stop (the worker shutting down) while the process starts must not
                # leave it running unseen; it is stopped below once it exists.
                proc = await asyncio.shield(spawn)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await _stop(await spawn, uid, group)
                raise
            finally:
                os.close(write_fd)
            try:
                await self._watch(proc, run, config, tail, outcome, uid, group)
                outcome.ready = _read_ready(read_fd)
            finally:
                if proc.returncode is None:
                    await _stop(proc, uid, group)
            if group is not None:
                outcome.cpu_seconds = group.cpu_seconds()
                outcome.out_of_memory = group.out_of_memory()
                outcome.hit_process_limit = group.hit_process_limit()
        finally:
            os.close(read_fd)
            if group is not None:
                await asyncio.to_thread(group.remove)
        return outcome

    async def _watch(
        self,
        proc: asyncio.subprocess.Process,
        run: ScriptRun,
        config: dict[str, Any],
        tail: _Tail,
        outcome: _Outcome,
        uid: int | None,
        group: RunGroup | None,
    ) -> None:
        """Hand the run its code, then watch it until it ends: the wall clock, the run's CPU time,
        its output, and whether the run still exists."""
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(config).encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await proc.stdin.drain()
        proc.stdin.close()
        reader = asyncio.create_task(self._read_output(proc.stdout, tail, outcome, proc))
        deadline = time.monotonic() + self.limits.timeout_seconds
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), WATCH_SECONDS)
                break
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                outcome.stopped = "timeout"
                await _kill_all(proc, uid, group)
            elif group is not None and group.cpu_seconds() >= self.limits.cpu_seconds:
                outcome.stopped = "cpu"
                await _kill_all(proc, uid, group)
            elif await self.table.run_status(run.id) != "running":
                outcome.stopped = "deleted"
                await _kill_all(proc, uid, group)
        outcome.returncode = proc.returncode
        await _kill_all(proc, uid, group)  # whatever the script left behind
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader, 5)
        head = bytes(tail.data[:500]) if tail.total == len(tail.data) else b""
        outcome.first_line = head.decode("utf-8", "replace").partition("\n")[0].strip()[:300]
        lines = bytes(tail.data[-2000:]).decode("utf-8", "replace").strip().splitlines()
        outcome.last_line = lines[-1].strip() if lines else ""

    async def _read_output(
        self, stream: asyncio.StreamReader, tail: _Tail, outcome: _Outcome, proc: asyncio.subprocess.Process
    ) -> None:
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                return
            tail.add(chunk)
            if tail.total > self.limits.max_output_bytes and outcome.stopped is None:
                outcome.stopped = "output"
                _kill(proc)


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# Run as the run's own user: kill(-1) reaches every process of that user (the sandbox's too,
# whatever session or pid namespace it made) except the caller.
_KILL_ALL = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass\n"


async def _kill_all(proc: asyncio.subprocess.Process, uid: int | None, group: RunGroup | None = None) -> None:
    """Kill the run's process group, every process in its control group and, when it has a user
    of its own, every process of that user."""
    _kill(proc)
    if group is not None:
        await asyncio.to_thread(group.kill_all)
    if uid is None:
        return  # no user of its own: bubblewrap's --die-with-parent and the pid namespace do it
    with contextlib.suppress(OSError):
        killer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            _KILL_ALL,
            user=uid,
            group=uid,
            extra_groups=[],
            env={},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await killer.wait()


async def _stop(proc: asyncio.subprocess.Process, uid: int | None, group: RunGroup | None = None) -> None:
    """Kill everything of the run and wait (a while) for the process to be reaped."""
    await _kill_all(proc, uid, group)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), 5)


def _read_ready(fd: int) -> bool:
    """Did the runner say it was ready (it closes the pipe before the script's code runs)?"""
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError, OSError):
        return os.read(fd, 16) == READY
    return False


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning|Iteration)(: .*)?$")


def _exception_line(line: str) -> str | None:
    """The last line of a traceback (``NameError: name 'x' is not defined``), or None."""
    line = line.strip()[:500]
    return line if _EXCEPTION_LINE.match(line) else None


def check_code(code: str, name: str) -> str | None:
    """Why the code cannot run (a syntax error, with its line), or None."""
    try:
        compile(code, f"<script {name}>", "exec")
    except SyntaxError as exc:
        return f"Line {exc.lineno}: {exc.msg}."
    except ValueError as exc:  # null bytes
        return str(exc)
    return None


def parse_schedule(value: Any) -> int | None:
    """Seconds between runs (at least 60), or None for manual runs only; ValueError says why not."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError("Must be a whole number of seconds, or null to run it by hand only.")
    if value < MIN_SCHEDULE:
        raise ValueError(f"Must be at least {MIN_SCHEDULE} seconds.")
    if value > MAX_SCHEDULE:
        raise ValueError(f"Must be at most {MAX_SCHEDULE} seconds (a year).")
    return int(value)
