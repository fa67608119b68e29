"""Scripts: saving them, queueing their runs, and running them inside a worker (DESIGN §14).

A run is a ``bff.script_run`` job (queueing lock ``script-{id}``; the ``script_runs`` table's
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
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from ..jobs import JobQueue
from ..runtime import Runtime
from ..store.scripts import Script, ScriptRun, ScriptRunActive, ScriptStore
from ..webhooks import Webhooks
from .api_socket import ApiSocket
from .sandbox import (
    SOCKET_IN_SANDBOX,
    Limits,
    Mode,
    bwrap_command,
    clean_environment,
    resolve_mode,
    run_user,
    unsandboxed_command,
)

logger = logging.getLogger("bff.scripts")

OUTPUT_KEPT_BYTES = 64 * 1024
MAX_CODE_BYTES = 256 * 1024
MIN_SCHEDULE = 60
MAX_SCHEDULE = 366 * 24 * 3600
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
        self.stopped: str | None = None  # "timeout", "output" or "deleted" when we ended it
        self.returncode: int | None = None
        self.report = ""
        self.first_line = ""


class ScriptService:
    def __init__(self, runtime: Runtime, queue: JobQueue, webhooks: Webhooks) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.table = ScriptStore(runtime.store)
        self.queue = queue
        self.webhooks = webhooks
        self.limits = Limits.from_settings(runtime.settings)
        self.mode = resolve_mode(runtime.settings.scripts)
        self._socket: ApiSocket | None = None
        self._hidden = [Path(runtime.settings.data_dir)]
        self.finished_listeners: list[Callable[[Script, ScriptRun], Awaitable[None]]] = []

    def serve_api(self, app: ASGIApp) -> None:
        """The app scripts reach over their socket (this process's own)."""
        self._socket = ApiSocket(app)

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.stop()

    def now(self) -> float:
        return float(self.runtime.clock())

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
        """The body of a ``bff.script_run`` job."""
        run = await self.table.start_run(run_id)
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

    async def _execute(self, run: ScriptRun, tail: _Tail) -> None:
        script = await self.table.get_by_id(run.script_id)
        account = await self.store.get_sub_account_by_id(run.sub_account_id)
        partner = await self.store.get_partner(account.partner_id) if account is not None else None
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
        finished = await self.table.finish_run(run.id, status=status, exit_code=exit_code, output=output, error=error)
        if finished is None:
            return  # the script was deleted meanwhile
        await self.table.prune_runs(script.id)
        logger.info("script %s run %s %s%s", script.id, run.id, status, f": {error}" if error else "")
        for listener in self.finished_listeners:
            try:
                await listener(script, finished)
            except Exception:
                logger.exception("a listener failed after script run %s", run.id)

    def _verdict(self, outcome: _Outcome) -> tuple[str, str | None]:
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
        if code == 0:
            return "succeeded", None
        if outcome.report:
            return "failed", outcome.report
        if code == 1 and (outcome.first_line.startswith("bwrap: ") or "bff.scripts.runner" in outcome.first_line):
            # bubblewrap itself failed (user namespaces turned off, say), or Python could not find
            # the runner in the sandbox: the script never ran.
            return "failed", f"The sandbox could not be set up ({outcome.first_line}); the script did not run."
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
        return "failed", f"The script exited with code {code}."

    async def _run_process(self, script: Script, run: ScriptRun, token: str, socket_path: str, tail: _Tail) -> _Outcome:
        read_fd, write_fd = os.pipe()
        config = {
            "code": script.raw_code,
            "name": script.name,
            "token": token,
            "script_id": script.id,
            "run_id": run.id,
            "report_fd": write_fd,
            "memory_mb": self.limits.memory_mb,
            "max_processes": self.limits.max_processes,
        }
        sandboxed = self.mode.name == "sandboxed"
        if sandboxed:
            assert self.mode.bwrap is not None
            argv = bwrap_command(self.mode.bwrap, socket_path=socket_path, hidden=self._hidden)
            config["socket"] = SOCKET_IN_SANDBOX
            cwd = "/"
            home = "/tmp"
        else:
            argv = unsandboxed_command()
            config["socket"] = socket_path
            home = cwd = os.path.dirname(socket_path)
        uid = run_user(run.id)
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
                preexec_fn=self.limits.apply,
                user=uid,
                group=uid,
                extra_groups=[] if uid is not None else None,
            )
        )
        try:
            # Shielded: a stop (the worker shutting down) while the process starts must not leave
            # it running unseen; it is stopped below once it exists.
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await _stop(await spawn, uid)
            raise
        finally:
            os.close(write_fd)
        try:
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
                    await _kill_all(proc, uid)
                elif await self.table.run_status(run.id) != "running":
                    outcome.stopped = "deleted"
                    await _kill_all(proc, uid)
            outcome.returncode = proc.returncode
            await _kill_all(proc, uid)  # whatever the script left behind
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reader, 5)
            outcome.report = _read_report(read_fd)
            outcome.first_line = bytes(tail.data[:500]).decode("utf-8", "replace").partition("\n")[0].strip()
        finally:
            os.close(read_fd)
            if proc.returncode is None:
                await _stop(proc, uid)
        return outcome

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


async def _kill_all(proc: asyncio.subprocess.Process, uid: int | None) -> None:
    """Kill the run's process group and, when it has a user of its own, every process of that user."""
    _kill(proc)
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


async def _stop(proc: asyncio.subprocess.Process, uid: int | None) -> None:
    """Kill everything of the run and wait (a while) for the process to be reaped."""
    await _kill_all(proc, uid)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), 5)


def _read_report(fd: int) -> str:
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while len(data) < 8000:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()[:4000]


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
