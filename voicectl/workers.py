"""`voicectl serve --workers N`: N runtime processes on one port (SO_REUSEPORT), supervised.

The parent only supervises: it starts the workers, passes SIGTERM/SIGINT on to all of them and
waits for their graceful stop, and restarts a worker that dies (with a growing delay) until one
keeps dying, when it stops the others and exits non-zero. Workers are spawned (not forked) in
their own process group, so a Ctrl-C in the terminal reaches the parent alone and each worker
gets exactly one stop signal, from it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.config import Settings

log = logging.getLogger("voicectl.workers")


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_s: float = 1.0  # a worker that died is started again after this, doubling per death in a row
    max_delay_s: float = 30.0
    stable_after_s: float = 60.0  # a worker up this long starts its count of deaths afresh
    max_deaths: int = 5  # deaths in a row (none stable) after which the parent gives up: exit 1
    stop_timeout_s: float = 40.0  # after SIGTERM, how long workers may take to drain before SIGKILL
    # Exits that a restart cannot mend (bad config, port not ours): everything stops with that code.
    fatal_exit_codes: frozenset[int] = frozenset()


def worker_count(value: str, cores: int | None = None) -> int:
    """``--workers``: a whole number >= 1 or ``auto``: one per core this process may use (its CPU
    affinity, as limits.local_capacity counts them: a container pinned to 2 of 64 cores gets 2).
    ValueError with the reason otherwise."""
    if value.strip().lower() == "auto":
        return max(1, cores if cores is not None else len(os.sched_getaffinity(0)))
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"expected a whole number or auto, got {value!r}") from None
    if count < 1:
        raise ValueError(f"expected at least 1, got {count}")
    return count


def local_shares(capacity: int, count: int) -> list[int]:
    """The box's local-engine admission budget split among ``count`` workers: the whole of it
    between them (the first few take the remainder), each at least 1."""
    base, extra = divmod(capacity, count)
    return [max(1, base + (1 if index < extra else 0)) for index in range(count)]


def worker_settings(settings: Settings, port: int, index: int, count: int) -> Settings:
    """Worker ``index``'s settings (1-based): its own instance id (``<instance id>-w<index>``) and its
    share of the box's local-engine budget (``limits.local_calls``)."""
    share = local_shares(settings.limits.local_capacity(), count)[index - 1]
    server = settings.server.model_copy(update={"instance_id": f"{settings.instance_id(port)}-w{index}"})
    limits = settings.limits.model_copy(update={"local_calls": share})
    return settings.model_copy(update={"server": server, "limits": limits})


def serve_worker(settings: Settings, host: str, port: int, cannot_listen_code: int) -> None:
    """One worker: the runtime of `voicectl serve` bound with SO_REUSEPORT (runs in the child)."""
    import errno

    from runtime.api.server import run

    try:
        run(settings, host=host, port=port, reuse_port=True)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            log.error("worker cannot listen", extra={"host": host, "port": port, "reason": str(exc)})
            raise SystemExit(cannot_listen_code) from None
        raise


def _child_main(target: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.setpgid(0, 0)  # out of the terminal's process group: stop signals come from the parent only
    parent = os.getppid()

    def stop_when_orphaned() -> None:  # the parent was killed (-9): stop as if it had sent SIGTERM
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_orphaned, name="parent-watch", daemon=True).start()
    target(*args)


@dataclass
class _Worker:
    index: int
    process: BaseProcess | None = None
    started_at: float = 0.0
    deaths: int = 0  # in a row, none of them after a stable run
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Runs ``target(*args_for(index))`` in ``count`` worker processes (index 1..count)."""

    target: Callable[..., None]
    args_for: Callable[[int], tuple[Any, ...]]
    count: int
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    _workers: list[_Worker] = field(default_factory=list)
    _stop_signals: int = 0
    _exit_code: int = 0

    def run(self) -> int:
        """Supervise until a stop signal (exit 0) or until a worker keeps dying (its fatal exit code,
        else 1). Call from the main thread: it installs SIGTERM/SIGINT handlers for the duration."""
        context = multiprocessing.get_context("spawn")
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._workers = [_Worker(index) for index in range(1, self.count + 1)]
            for worker in self._workers:
                self._start(context, worker)
            while not self._stop_signals and not self._exit_code:
                self._watch(context)
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self._exit_code

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signals += 1
        if self._stop_signals > 1:  # a second Ctrl-C: no more waiting for the drain
            for worker in self._workers:
                if worker.process is not None and worker.process.is_alive():
                    worker.process.kill()

    def _start(self, context: Any, worker: _Worker) -> None:
        worker.process = context.Process(target=_child_main, args=(self.target, self.args_for(worker.index)),
                                         name=f"voicectl-worker-{worker.index}")
        worker.process.start()
        worker.started_at, worker.restart_at = time.monotonic(), None
        log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})

    def _watch(self, context: Any) -> None:
        now = time.monotonic()
        due = [w.restart_at for w in self._workers if w.restart_at is not None]
        timeout = max(0.0, min(due) - now) if due else 1.0
        live = [w.process.sentinel for w in self._workers if w.process is not None and w.restart_at is None]
        wait(live, timeout=min(timeout, 1.0))  # returns early on a death; signals interrupt it too
        if self._stop_signals:
            return
        now = time.monotonic()
        for worker in self._workers:
            process = worker.process
            if worker.restart_at is None and process is not None and not process.is_alive():
                self._on_death(worker, process.exitcode, now)
                if self._exit_code:
                    return
            if worker.restart_at is not None and worker.restart_at <= now:
                self._start(context, worker)

    def _on_death(self, worker: _Worker, code: int | None, now: float) -> None:
        if now - worker.started_at >= self.policy.stable_after_s:
            worker.deaths = 0
        worker.deaths += 1
        extra = {"worker": worker.index, "pid": worker.process.pid if worker.process else None, "exit_code": code,
                 "deaths_in_a_row": worker.deaths}
        if code in self.policy.fatal_exit_codes:
            log.error("worker exited with an error a restart cannot mend: stopping", extra=extra)
            self._exit_code = code or 1
            return
        if worker.deaths >= self.policy.max_deaths:
            log.error("worker keeps dying: stopping every worker", extra=extra)
            self._exit_code = 1
            return
        delay = min(self.policy.max_delay_s, self.policy.first_delay_s * 2 ** (worker.deaths - 1))
        worker.restart_at = now + delay
        log.warning("worker died: restarting it", extra={**extra, "restart_in_s": delay})

    def _stop_all(self) -> None:
        running = [w.process for w in self._workers if w.process is not None and w.process.is_alive()]
        for process in running:
            try:
                os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.policy.stop_timeout_s
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker did not stop in time: killed", extra={"pid": process.pid})
                process.kill()
                process.join()
        if running:
            log.info("workers stopped", extra={"workers": len(running)})


def run_workers(settings: Settings, host: str, port: int, count: int, *, cannot_listen_code: int,
                fatal_exit_codes: Sequence[int] = ()) -> int:
    """`serve --workers N` (N > 1): supervise N runtimes on ``host:port``; the parent's exit code."""
    from runtime.logs import configure_logging

    configure_logging(settings.logging)
    policy = RestartPolicy(stop_timeout_s=settings.server.shutdown_grace_s + 10,
                           fatal_exit_codes=frozenset(fatal_exit_codes) | {cannot_listen_code})
    log.info("voicectl serving with workers", extra={"host": host, "port": port, "workers": count})
    supervisor = Supervisor(serve_worker, lambda index: (worker_settings(settings, port, index, count), host, port,
                                                         cannot_listen_code), count, policy)
    return supervisor.run()
