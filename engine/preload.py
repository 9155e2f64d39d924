"""Heavy modules imported on a background thread, so that the first clustering does not wait for them.

Start it when the process is about to sit idle (the UI waiting for a key), not while it trains: an import holds
the GIL, and a training loop, which gives the GIL up at every torch call, waits for it each time. Measured on the
2-core dev box (1 epoch of MNIST, then k=2, medians of 7): started with pretraining, it took clustering from 0.77 s
to 0.03 s but pretraining from 1.43 s to 2.20 s, so the run took no less time (2.25 s against 2.21 s).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Iterable

log = logging.getLogger("clusterlab")

# What engine/clustering.py imports on first use; change this when clustering's imports change.
CLUSTERING_MODULES = ("sklearn.cluster", "threadpoolctl")

_lock = threading.Lock()
_started: dict[str, threading.Thread] = {}


def start_background_imports(modules: Iterable[str] = CLUSTERING_MODULES) -> threading.Thread | None:
    """Import `modules` on a daemon thread; returns it, or None when there is nothing left to import.

    Idempotent: a module already imported, or already being imported by an earlier call, is skipped. An
    `import` of one of them elsewhere meanwhile is safe: Python's per-module import lock makes it wait for
    this thread's import to finish rather than see a half-initialised module. A module that fails to import
    here is only logged: the real import, where the module is needed, raises as it always did.
    """
    with _lock:
        wanted = [m for m in dict.fromkeys(modules) if m not in sys.modules and m not in _started]
        if not wanted:
            return None
        thread = threading.Thread(target=_import_all, args=(wanted,), name="clusterlab-preload", daemon=True)
        _started.update(dict.fromkeys(wanted, thread))
    thread.start()
    return thread


def _import_all(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure is reported again by the import that needs it
            log.debug("background import of %s failed: %s", name, exc)
