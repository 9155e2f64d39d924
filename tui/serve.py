"""`clusterlab serve [NAME]`: the same terminal UI in a browser, with textual-serve.

textual-serve runs a command per browser tab; here that is `clusterlab tui --session NAME`, so each tab is one more
client of the session's host, attached like a terminal, and a terminal and a browser tab watch the same run.
"""

from __future__ import annotations

import shlex
import socket
import sys

from engine.cli_host import attach_target
from engine.errors import ConfigError
from engine.session import check_name


def serve(name: str | None, host: str, port: int) -> int:
    """Serve the UI on NAME (opened, or created, as `clusterlab tui --session NAME` does; without NAME: the only
    session whose host runs) at http://HOST:PORT until Ctrl-C."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be a whole number from 1 to 65535, not {port}.")
    try:
        from textual_serve.server import Server
    except ImportError:
        raise ConfigError("clusterlab serve needs the textual-serve package: pip install -e '.[serve]'.") from None
    target = check_name(name) if name else attach_target(None)
    try:  # said before the banner, not after it
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"Cannot serve on {host}:{port} ({exc.strerror or exc}); pick another --port.") from None
    command = shlex.join([sys.executable, "-m", "tui.cli", "tui", "--session", target])
    server = Server(command, host=host, port=port, title=f"clusterlab {target}")
    print(f"clusterlab: serving session {target} at {server.public_url} (Ctrl-C ends it; the run goes on). From "
          f"another machine: ssh -L {port}:127.0.0.1:{port} THIS-HOST, then open http://127.0.0.1:{port}",
          flush=True)
    server.serve()
    return 0
