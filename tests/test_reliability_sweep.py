"""What a hostile or unlucky user tried on sweeps, exports and the command line: unwritable folders, a full disk,
links out of the sessions root, shrinking grids, huge grids, numbers that are not plain decimals."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_sweep import TINY_FLAGS, _one_line_error

RUN_FLAGS = ["--dataset", "synthetic", "--hidden", "16,16", "--device", "cpu", "--steps", "20",
             "--finetune-epochs", "0"]


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """`path` (a folder, or a file) cannot be written while inside: by its mode, or (as root, whom modes do not
    stop) by the immutable attribute."""
    if os.geteuid() != 0:
        if path.is_file():
            pytest.skip("only root may make a file immutable, and a file's mode does not stop os.replace over it")
        mode = path.stat().st_mode
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root, whom modes do not stop, and chattr +i failed: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# ----- 11: a read-only sessions root -------------------------------------------------------------------------------


def test_run_and_sweep_in_a_read_only_sessions_root_say_so_in_one_sentence(capsys, sessions):
    with unwritable(sessions):
        error = _one_line_error(capsys, ["run", "--session", "a", *RUN_FLAGS])
        assert str(sessions / "a") in error and "writable" in error
        error = _one_line_error(capsys, ["sweep", "sw", "--seeds", "1", *TINY_FLAGS])
        assert str(sessions / "sw") in error and "writable" in error
    assert list(sessions.iterdir()) == []
