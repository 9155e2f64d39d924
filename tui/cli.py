"""The `clusterlab` console script: headless commands go to `engine.cli`; `tui` (the default) opens the app.

Textual is imported only when the UI opens, so `clusterlab run` never loads it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from engine.cli import main as engine_main
from engine.config import Config


def open_ui(name: str | None, config: Config | None) -> int:
    """`tui`: open (or create) `name` with `config`; `attach` (config None): attach to NAME's running host."""
    from tui.app import run_app

    return run_app(name, config or Config(), attach=config is None)


def serve_ui(name: str | None, host: str, port: int) -> int:
    """`serve`: the UI in a browser (tui/serve.py)."""
    from tui.serve import serve

    return serve(name, host, port)


def main(argv: Sequence[str] | None = None) -> int:
    return engine_main(argv, ui=open_ui, serve=serve_ui)


def script() -> None:
    """The console script: run the command, then end the process without tearing down torch's thousands of
    modules and objects one by one (about a second here). Every session was saved, fsynced and unlocked by then."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    script()
