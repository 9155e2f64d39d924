"""The Ray executor: sweep members as Ray tasks on a Ray cluster (or a local Ray), with no shared filesystem.

The driver (the `clusterlab sweep` process) ships each task what its member starts from, as bytes: the member's own
session files when it saved before (a member stopped mid-job resumes), else its parent's. The worker lays them out
in a temporary sessions root, runs `engine.member.run_member` there and returns the member folder's files; the
driver writes them under the sessions root (checkpoint and metrics log first, session.json last, each atomically)
and only then reports the member and starts its children. A task whose worker dies (a lost node, an OOM kill) or
that raises an OSError (a worker's disk) runs again, up to MAX_RETRIES times; a member's own failure (a diverged
loss, say) is a result and is not retried. Workers need clusterlab installed, and the data where the member's
settings look for it. The progress bar moves as members end, not within one. A stop cancels the running tasks:
their members start again from their last save on the driver at the next run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from engine.errors import ConfigError, SessionError
from engine.member import Progress, failed, member_result, run_member, unfinished
from engine.session import Files, has_session, pack_session, unpack_session
from engine.sweep import FINISHED

INSTALL_HINT = "install the ray extra: pip install -e '.[ray]'"
MAX_RETRIES = 3
LOCAL_CPUS = 2
WAIT_S = 0.5  # how often the driver looks at `stop` while tasks run
Shipped = dict[str, Files]  # session folder name -> its files
Task = Callable[[dict, Shipped], tuple[dict, Files | None]]


def run_shipped(settings: dict, shipped: Shipped) -> tuple[dict, Files | None]:
    """Worker side: run the member in a temporary sessions root holding the shipped folders; its result, and its
    folder's files (None if it never saved)."""
    with tempfile.TemporaryDirectory(prefix="clusterlab-ray-") as tmp:
        root = Path(tmp)
        for folder, files in shipped.items():
            unpack_session(root / folder, files)
        result = run_member({**settings, "root": tmp})
        path = root / settings["name"]
        return result, pack_session(path) if has_session(path) else None


def require_ray() -> None:
    """Raise one sentence on how to install Ray if it is missing (without importing it: that takes a second)."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"Ray is not installed; {INSTALL_HINT}.")


def connect(address: str | None = None):
    """The ray module, joined to the cluster at `address` ('auto', or HOST:PORT of its head) or, without one, to a
    new local Ray of LOCAL_CPUS CPUs on the loopback interface only; and whether this call initialised Ray (a Ray
    already initialised in this process is used as it is)."""
    if address is None:
        # Read when ray is first imported: a local Ray then binds to 127.0.0.1, not to the machine's address, and
        # sends no usage statistics.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    require_ray()
    import ray

    if ray.is_initialized():
        return ray, False
    try:
        # Workers' output stays in Ray's logs: the driver's stdout carries the table (or --json) only, and a
        # member's failure comes back as its result.
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address is None:
            ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or ValueError here
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ConfigError(f"Could not start or join {where} ({exc}); check --ray-address.") from None
    return ray, True


class RayExecutor:
    """Runs members as Ray tasks, each once its parent's result is in (see the module docstring), on the Ray that
    `connect(address)` gives; a Ray it started is shut down when the sweep ends. `task` is what a task runs
    (tests inject faults through it)."""

    def __init__(self, address: str | None = None, stop: threading.Event | None = None, task: Task = run_shipped,
                 max_retries: int = MAX_RETRIES) -> None:
        require_ray()  # before the sweep starts
        self.address, self.stop, self.task, self.max_retries = address, stop or threading.Event(), task, max_retries
        self.data_elsewhere = address is not None  # a cluster's workers read the data, which may not be here

    def __call__(self, settings: list[dict], report: Callable[[dict], None], progress: Progress) -> None:
        if not settings:
            return
        ray, started = connect(self.address)
        try:
            self._run(ray, settings, report, progress)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, settings: list[dict], report: Callable[[dict], None], progress: Progress) -> None:
        remote = ray.remote(max_retries=self.max_retries, retry_exceptions=[OSError])(self.task)
        names = {member["name"] for member in settings}
        ended: dict[str, bool] = {}  # member name -> it finished
        waiting = list(settings)
        running: dict = {}  # ObjectRef -> the member it runs

        def end(result: dict) -> None:
            ended[result["name"]] = result["status"] == FINISHED
            report(result)

        while waiting or running:
            for member in list(waiting):
                parent = member["parent"]
                if parent in ended and not ended[parent]:
                    waiting.remove(member)
                    end(failed(member["name"], f"not run: {parent} did not finish"))
                elif parent is None or parent not in names or parent in ended:
                    waiting.remove(member)
                    try:
                        shipped = _shipped(member)
                    except (OSError, ValueError, KeyError, SessionError) as exc:
                        end(failed(member["name"], f"its starting state could not be read: {exc}"))
                        continue
                    running[remote.remote(member, shipped)] = member
                    progress(member["name"], 0.0)
            if not running:  # only members listed before their parents could be left: a caller's error
                for member in waiting:
                    end(failed(member["name"], f"not run: {member['parent']} was never run"))
                return
            ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
            for ref in ready:
                end(self._collect(ray, ref, running.pop(ref)))
            if self.stop.is_set():
                for ref, member in running.items():
                    ray.cancel(ref, force=True)
                    report(unfinished(member["name"]))
                return

    def _collect(self, ray, ref, member: dict) -> dict:
        """A finished task's member, written under the sessions root; its result as read back from there."""
        try:
            result, files = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return failed(member["name"], f"its Ray task failed after {self.max_retries} retries: {_reason(exc)}")
        path = Path(member["root"]) / member["name"]
        try:
            if files is not None:
                unpack_session(path, files)
        except (OSError, SessionError) as exc:
            return failed(member["name"], f"its files could not be written to {path}: {exc}")
        return member_result(path, member) if result["status"] == FINISHED else result


def _reason(exc: Exception) -> str:
    """What went wrong in a task, in one line: the task's own exception if it raised one, else Ray's words (a dead
    worker, say)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception):
        return f"{type(cause).__name__}: {cause}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _shipped(member: dict) -> Shipped:
    """What the member starts from: its own session if it saved before, else its parent's (nothing if new)."""
    root = Path(member["root"])
    own = root / member["name"]
    if has_session(own):
        return {member["name"]: pack_session(own)}
    if member["parent"] is not None:
        return {member["parent"]: pack_session(root / member["parent"])}
    return {}
