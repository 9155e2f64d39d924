"""The host process, `python -m engine.host_process NAME`: open or create the session, serve it, save, exit.

Started detached by engine/client.py's start_host (its own session, no terminal, stdin /dev/null); it answers the
starter on a pipe with "ok" or the one sentence that says why it could not start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from engine.client import HOST_LOG
from engine.config import Config
from engine.errors import ClusterlabError
from engine.host import IDLE_EXIT_S, log, serve
from engine.protocol import socket_file


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.host_process NAME`: open (or create) the session, serve it until stopped, save, exit."""
    parser = argparse.ArgumentParser(prog="python -m engine.host_process", allow_abbrev=False)
    parser.add_argument("name")
    parser.add_argument("--config", help="create the session with this Config as JSON")
    parser.add_argument("--plan", choices=["default", "continue"], help="queue this plan once serving")
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT_S)
    parser.add_argument("--ready-fd", type=int, help="write 'ok' or the error sentence here, then close it")
    args = parser.parse_args(argv)
    stop = threading.Event()
    reasons: list[str] = []

    def on_signal(signum, frame) -> None:
        reasons.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a terminal going away is none of the host's business
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None
    try:
        from engine.engine import Engine
        from engine.session import session_path

        path = session_path(args.name)
        engine = (Engine.create(path, Config.from_dict(json.loads(args.config))) if args.config
                  else Engine.open(path))
    except ClusterlabError as exc:
        return _tell(ready, str(exc), 2)
    except Exception as exc:  # noqa: BLE001 - the starter gets one sentence, never a traceback
        return _tell(ready, f"The host for {args.name} could not open it: {type(exc).__name__}: {exc}.", 1)
    _log_to(path / HOST_LOG)
    try:
        host = serve(engine, idle_exit_s=args.idle_exit, on_stop=lambda reason: (reasons.append(reason), stop.set()))
    except OSError as exc:
        engine.close()
        return _tell(ready, f"The host for {args.name} cannot listen on {socket_file(path)}: {exc}.", 1)
    log.info("host pid %d serving %s", os.getpid(), path)
    if args.plan == "default":
        engine.plan_default()
    elif args.plan == "continue":
        engine.continue_plan()
    _tell(ready, "ok", 0)
    stop.wait()
    log.info("saving and ending (%s)", reasons[0] if reasons else "?")
    engine.close()
    host.close(f"the host has saved and ended ({reasons[0] if reasons else 'stopped'})")
    log.info("ended at step %d", engine.snapshot().step)
    return 0


def _tell(ready, line: str, code: int) -> int:
    """Answer the starter once: 'ok' or the sentence that says why the host could not start."""
    if ready is not None:
        try:
            ready.write(line.replace("\n", " ") + "\n")
            ready.close()
        except OSError:
            pass  # the starter gave up waiting
    if code:
        print(f"clusterlab host: {line}", file=sys.stderr)
    return code


def _log_to(path: Path) -> None:
    """From now on this process's output (and any traceback) goes to the session's host.log."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)


if __name__ == "__main__":
    sys.exit(main())
