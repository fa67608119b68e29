"""The first thing that runs inside a script's sandbox: ``python -I -m bff.scripts.runner``.

stdin carries one JSON object (the script's code, its run's token, where the BFF's socket is,
the limits) and is then closed. The runner sets up :mod:`bff.scripts.pq`, runs the code as
``__main__`` and, when the code raises, writes one line saying what went wrong to the report
descriptor (a pipe to the worker) and the traceback to stderr, then exits 1.
"""

from __future__ import annotations

import io
import json
import linecache
import os
import sys
import traceback
from typing import Any


def _summary(exc: BaseException, config: dict[str, Any]) -> str:
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, MemoryError):
        text = f"MemoryError: the script ran out of memory (a script may use {config.get('memory_mb')} MB)."
    elif isinstance(exc, BlockingIOError) and "fork" in "".join(traceback.format_tb(exc.__traceback__)):
        text += f" (a script may run at most {config.get('max_processes')} processes)"
    return text


def _report(fd: int | None, text: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, text.encode("utf-8", "replace")[:4000])
    except OSError:
        pass


def main() -> int:
    config: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    report_fd = config.get("report_fd")
    # -I ignores PYTHONUNBUFFERED: keep stdout and stderr in the order they were written.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    leader = os.getpid()
    # httpx's command-line tool (click, rich, pygments) is a third of its import time; scripts
    # never use it, and httpx carries on without it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from . import pq

    pq._configure(
        socket_path=config["socket"],
        token=config["token"],
        script_id=int(config["script_id"]),
        run_id=int(config["run_id"]),
    )
    code = config["code"]
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__, "pq": pq}
    filename = f"<script {config.get('name', '')}>"
    # Tracebacks show the script's own lines.
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    try:
        compiled = compile(code, filename, "exec")
        exec(compiled, namespace)
    except SystemExit as exc:
        status = exc.code
        if status in (None, 0):
            return 0
        if os.getpid() == leader:
            _report(report_fd, f"The script called exit({status!r}).")
        return status if isinstance(status, int) else 1
    except BaseException as exc:  # noqa: BLE001 - everything the script raises is its result
        if os.getpid() != leader:  # a forked child of the script: not the run's answer
            os._exit(1)
        tb = exc.__traceback__
        # Only the script's own frames: the runner's are noise to its author.
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<script"):
            tb = tb.tb_next
        try:
            traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
        except MemoryError:
            pass
        _report(report_fd, _summary(exc, config))
        return 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
