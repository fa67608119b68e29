"""The first thing that runs inside a script's sandbox (``python -I``, see :func:`bff.scripts.sandbox.runner_command`).

stdin carries one JSON object (the script's code, its run's token, where the BFF's socket is)
and is then closed. The runner sets up :mod:`bff.scripts.pq`, tells the worker it is ready on the
"ready" descriptor and closes it, *then* runs the code as ``__main__``: nothing the script does can
write to the worker's pipe, so the worker knows whether the sandbox came up without taking the
script's word for anything. When the code raises, the traceback goes to stderr and the runner
exits 1; the worker reads why a run ended from facts (exit status, the run's control group).
"""

from __future__ import annotations

import io
import json
import linecache
import os
import sys
import traceback
from typing import Any


def main() -> int:
    config: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    ready_fd = config.get("ready_fd")
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
    if isinstance(ready_fd, int):
        os.write(ready_fd, b"ready")
        os.close(ready_fd)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__, "pq": pq, "st": pq.st}
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
        if not isinstance(status, int):
            print(status, file=sys.stderr)
            return 1
        return status
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
            os.write(2, f"{type(exc).__name__}\n".encode())
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
