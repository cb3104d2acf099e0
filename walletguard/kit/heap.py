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
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> int:
    """Collect what is already garbage, then freeze every object alive; how many are frozen.

    Called once a server process has built its app, before it takes requests
    (``walletguard.app.server_app``); not where apps come and go in one process (the tests)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
