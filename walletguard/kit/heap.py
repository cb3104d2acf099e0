"""A server process's long-lived objects, kept out of the cyclic garbage collector's walks.

A worker of ``walletguard serve`` holds some 400,000 objects the collector tracks before it
answers a request: the modules imported, the container, the compiled rules. CPython's full
(generation 2) collection walks every one of them: on the benchmark machine 200 ms in process,
up to half a second in a server under load, during which the process answers nothing; every
request it was working on, payments holding their row locks included, waits that long. A server
meets one every so often under load (when enough new objects have outlived two younger
collections), and each is a stall in the latency tail.

``freeze_long_lived`` collects once and then moves everything alive into the collector's
permanent generation (``gc.freeze``), which no later collection walks: a full collection then
walks only what was made since start-up. Nothing is kept that would not be kept anyway: what is
alive at start-up lives as long as the process, and reference counting still frees a frozen
object the moment nothing refers to it; only a cycle among frozen objects would outlive its use.

What start-up does not make, the first requests do, and it lives as long: some 30,000 objects
a payment's first requests leave for good (statements compiled once, the libraries' caches,
data read on first use: the BIN table, the password list). A full collection walked them all,
20 ms in process and up to 110 ms in a server under load (``bench/bench_payments.py``, its
full collections). ``frozen_heap`` therefore freezes once more, right after the first full
collection after start-up (under load it comes after a thousand payments or two; nothing here
forces it): what survived it is the process's long-lived objects, and the collection has just
been paid for.
Whatever else is alive at that moment (the requests then in flight) is frozen with them; it is
still freed by reference counting, and only its cycles, once, are kept.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def freeze_long_lived() -> int:
    """Collect what is already garbage, then freeze every object alive; how many are frozen.

    Called once a server process has built its app, before it takes requests
    (``frozen_heap``); not where apps come and go in one process (the tests)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


# CPython's oldest generation: a collection of it is a full collection.
_OLDEST = 2


class _FreezeSurvivors:
    """A ``gc.callbacks`` entry: at the end of the first full collection it sees, freezes what
    survived it; inert after that (it stays in the list until ``frozen_heap`` ends, since
    removing an entry while the collector walks the list would skip the next one)."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if self.done or phase != "stop" or info["generation"] != _OLDEST:
            return
        self.done = True
        gc.freeze()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """For the life of a server process's app (its lifespan): freeze what start-up made
    (``freeze_long_lived``), then, once, what survives the first full collection after that.
    On leaving, the hook is removed and the heap unfrozen: a process that goes on (a
    test) gets its collector back as it was."""
    freeze_long_lived()
    hook = _FreezeSurvivors()
    gc.callbacks.append(hook)
    try:
        yield
    finally:
        gc.callbacks.remove(hook)
        gc.unfreeze()
