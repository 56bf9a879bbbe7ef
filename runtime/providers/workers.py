"""Bounded thread pools for the CPU-heavy local engines (whisper, piper).

The engines release the GIL while they compute (CTranslate2, onnxruntime), so threads give
real parallelism; the bound keeps N busy calls from oversubscribing the cores, and the event
loop never runs model code. STT and TTS get separate pools so a long decode never sits in
front of a reply's first sentence: both are latency-critical for different calls.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_pools: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def default_size() -> int:
    """One worker per core: each engine call uses one compute thread."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def pool(name: str, size: int | None = None) -> ThreadPoolExecutor:
    """The process-wide pool called ``name``, created on first use (``size`` counts only then)."""
    with _lock:
        executor = _pools.get(name)
        if executor is None:
            executor = _pools[name] = ThreadPoolExecutor(max_workers=size or default_size(),
                                                         thread_name_prefix=f"voicectl-{name}")
        return executor


async def run_in(name: str, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on pool ``name``, awaited without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(pool(name), fn, *args)
