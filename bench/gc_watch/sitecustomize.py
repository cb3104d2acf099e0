"""Imported by every Python process started with this folder on ``PYTHONPATH`` (``site`` looks
for a ``sitecustomize`` module): with ``WALLETGUARD_BENCH_GC_LOG`` set to a folder, each full
(generation 2) garbage collection of the process is appended to ``<folder>/<pid>.log`` as
``<unix time at its end> <milliseconds it took>``. ``bench/bench_payments.py`` starts its
servers so, and reports the collections that fell inside its measured runs: while one runs,
the process answers nothing."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

_folder = os.environ.get("WALLETGUARD_BENCH_GC_LOG")

if _folder:
    _log = Path(_folder) / f"{os.getpid()}.log"
    _started = [0.0]

    def _watch(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        took_ms = (time.perf_counter() - _started[0]) * 1000
        with _log.open("a") as out:
            out.write(f"{time.time():.3f} {took_ms:.1f}\n")

    gc.callbacks.append(_watch)
