"""A trivial app supervised as `serve --workers N` supervises the runtime (tests/cli/test_workers.py).

    python -m tests.cli.worker_apps PORT COUNT MODE MARKS_DIR

MODE: ``serve`` (answer GET / with the worker's pid, index and own loopback URL), ``crash`` (exit 3 at once),
``fatal`` (exit 10 at once, as a worker that cannot listen). A serving worker that stops
gracefully writes ``MARKS_DIR/stopped-<pid>``. The real runtime's workers: `voicectl serve --workers 2`
in tests/cli/test_serve_cluster.py."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from aiohttp import web

from voicectl.workers import RestartPolicy, Supervisor

FAST = RestartPolicy(first_delay_s=0.2, max_delay_s=1.0, stable_after_s=60.0, max_deaths=3, stop_timeout_s=10.0,
                     fatal_exit_codes=frozenset({10}))


def hello_worker(index: int, port: int, mode: str, marks: str) -> None:
    if mode == "crash":
        raise SystemExit(3)
    if mode == "fatal":
        raise SystemExit(10)
    from runtime.api.appkeys import SELF_URL
    from runtime.api.server import serve_until_signalled

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid(), "worker": index, "self_url": request.app.get(SELF_URL)})

    async def mark_stopped(app: web.Application) -> None:
        (Path(marks) / f"stopped-{os.getpid()}").write_text(str(index))

    app = web.Application()
    app.router.add_get("/", hello)
    app.on_shutdown.append(mark_stopped)
    asyncio.run(serve_until_signalled(app, "127.0.0.1", port, 5.0, reuse_port=True))


def main() -> int:
    port, count, mode, marks = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    return Supervisor(hello_worker, lambda index: (index, port, mode, marks), count, FAST).run()


if __name__ == "__main__":
    sys.exit(main())
