"""The commands that talk to session hosts: ps, remote, tail, stop, `run --detach` and attach's choice of host."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine import events as ev
from engine.client import Client, probe, running_hosts, start_host
from engine.config import Config
from engine.errors import EXIT_FAILED, ClusterlabError, ConfigError, SessionError
from engine.protocol import check_command, event_to_wire
from engine.session import did_you_mean, peek_session, session_path
from engine.snapshot import Snapshot

PROGRESS_EVERY_S = 1.0  # tail's text output shows training progress at most this often


def add_host_parsers(commands) -> None:
    ps = commands.add_parser("ps", help="list running session hosts",
                             description="List the hosts serving sessions under $CLUSTERLAB_SESSIONS or ./sessions: "
                             "name, pid, phase, state, step, steps/s and attached clients.")
    ps.add_argument("--json", action="store_true", help="print the list as JSON")
    remote = _on_session(commands, "remote", "send one command to a session's host and print its reply",
                         "Send one command to the host of a running session: pause, resume, stop, save, train, "
                         "continue, cluster, finetune, ablate, plan, status. Arguments as KEY=VALUE, e.g. "
                         "'clusterlab remote NAME cluster k=3 source=gradients'.", "print the reply as JSON")
    remote.add_argument("what", metavar="COMMAND", help="the command")
    remote.add_argument("args", metavar="KEY=VALUE", nargs="*", help="the command's arguments")
    _on_session(commands, "tail", "follow a running session's events until its plan ends",
                "Print a running session's events as they happen until its plan ends, its host ends, or Ctrl+C. "
                "Never changes the run.", "one JSON object a line per event")
    _on_session(commands, "stop", "save a running session and end its host",
                "Stop the session's host: the run stops at the next step boundary, is saved, and can be continued "
                "with 'clusterlab resume NAME'.")


def _on_session(commands, name: str, summary: str, description: str, json_help: str | None = None):
    """A command on one session NAME, with --json when its output is data."""
    parser = commands.add_parser(name, help=summary, description=description)
    parser.add_argument("name", metavar="NAME", help="session name")
    if json_help is not None:
        parser.add_argument("--json", action="store_true", help=json_help)
    return parser


def connect(name: str, attach: bool = False, client: str = "cli") -> Client:
    """A client of the host serving session `name`; SessionError (exit 2) with one sentence if none does."""
    path = session_path(name)
    if not path.is_dir():
        raise SessionError(f"There is no session {name}{did_you_mean(name)}; see 'clusterlab sessions'.")
    try:
        return Client.connect(path, client=client, attach=attach)
    except SessionError:
        raise SessionError(f"No host runs for {name}; continue it with 'clusterlab resume {name}', or open it "
                           f"with 'clusterlab tui --session {name}'.") from None


def run_detached(name: str, config: Config, idle_exit_s: float | None, as_json: bool = False) -> int:
    """`clusterlab run --detach`: start the plan in a host of its own, print the session's name (with --json, its
    name, folder and the host's pid), return."""
    path = start_host(name, config, plan="default", idle_exit_s=idle_exit_s)
    welcome = probe(path) if as_json else None
    print(json.dumps({"name": name, "session": str(path), "pid": welcome and welcome["pid"]}) if as_json else name)
    print(f"clusterlab: {name} runs in the background; follow it with 'clusterlab tail {name}' or "
          f"'clusterlab attach {name}'.", file=sys.stderr)
    return 0


def not_hosted(name: str) -> Path:
    """The folder of session `name`, refused (exit 2) while a host runs it: it is not for a second process."""
    path = session_path(name)
    welcome = probe(path)
    if welcome is not None:
        raise SessionError(f"{name} is running in a host (pid {welcome['pid']}); use 'clusterlab attach {name}', "
                           f"'clusterlab remote {name} ...', or 'clusterlab stop {name}' first.")
    return path


def attach_target(name: str | None) -> str:
    """The session `clusterlab attach [NAME]` opens: NAME if a host serves it, else the only running host."""
    if name is not None:
        if probe(session_path(name)) is None:
            raise SessionError(f"No host runs for {name}{did_you_mean(name)}; open it with 'clusterlab tui --session "
                               f"{name}', or see 'clusterlab ps'.")
        return name
    names = [n for n, path in running_hosts() if probe(path) is not None]
    if len(names) == 1:
        return names[0]
    if not names:
        raise SessionError("No session host is running; start one with 'clusterlab' or 'clusterlab run --detach'.")
    raise SessionError(f"{len(names)} hosts are running ({', '.join(names)}); name one: 'clusterlab attach NAME'.")


def cmd_ps(args: argparse.Namespace) -> int:
    rows = []
    for _name, path in running_hosts():
        try:
            with Client.connect(path, client="ps", attach=False, timeout=5.0) as client:
                reply = client.command("status")
        except SessionError:
            continue  # a socket left by a killed host: its next host replaces it
        if reply.get("ok"):
            status = reply["result"]
            rows.append({key: status.get(key) for key in ("name", "pid", "phase", "state", "step", "steps_per_s",
                                                           "clients")})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("No session host is running; start one with 'clusterlab run --detach' or 'clusterlab'.")
    else:
        print(f"{'NAME':<28} {'PID':>7}  {'PHASE':<10} {'STATE':<11} {'STEP':>8} {'STEPS/S':>9} {'CLIENTS':>7}")
        for r in rows:
            print(f"{r['name']:<28} {r['pid']:>7}  {r['phase']:<10} {r['state']:<11} {r['step']:>8} "
                  f"{r['steps_per_s']:>9,.0f} {r['clients']:>7}")
    return 0


def cmd_remote(args: argparse.Namespace) -> int:
    command = {"name": args.what, "args": dict(_key_value(text) for text in args.args)}
    check_command(command)  # bad input is refused here, with the same sentence the host would give
    with connect(args.name) as client:
        reply = client.command(args.what, **command["args"])
    if args.json:
        print(json.dumps(reply, indent=2))
    elif not reply["ok"]:
        print(f"clusterlab: {args.name}: {reply['error']}", file=sys.stderr)
    elif reply.get("result") is not None:
        print(json.dumps(reply["result"], indent=2))
    else:
        print(f"{args.name}: {args.what} sent.")
    return 0 if reply["ok"] else EXIT_FAILED


def cmd_tail(args: argparse.Namespace) -> int:
    failed = False
    with connect(args.name, attach=True, client="tail") as client:
        if plan_done(client.snapshot):
            print(f"clusterlab: {args.name} has nothing running ({client.snapshot.state} at step "
                  f"{client.snapshot.step}).", file=sys.stderr)
            return 0
        shown = 0.0
        for item in client.updates():
            if isinstance(item, Snapshot):
                if plan_done(item):
                    break
                continue
            if not isinstance(item, ev.Event):
                continue
            failed = failed or isinstance(item, ev.Failed)
            if args.json:
                print(json.dumps(event_to_wire(item)), flush=True)
            elif not isinstance(item, ev.Progress) or _progress_due(item, shown):
                shown = time.monotonic() if isinstance(item, ev.Progress) else shown
                print(describe(item), flush=True)
    return EXIT_FAILED if failed else 0


def cmd_stop(args: argparse.Namespace) -> int:
    with connect(args.name) as client:
        reply = client.command("stop-host")
        if not reply["ok"]:
            raise ClusterlabError(reply["error"])
        for _ in client.updates():  # the host closes the connection once it has saved
            pass
    _wait_exit(client.welcome["pid"])
    saved = peek_session(session_path(args.name)) or {}
    print(f"clusterlab: {args.name} saved at step {saved.get('step')} and its host ended; continue it with "
          f"'clusterlab resume {args.name}'.", file=sys.stderr)
    return 0


def _wait_exit(pid: int, timeout: float = 30.0) -> None:
    """Wait until process `pid` has ended (a zombie counts), so that `stop` returning means the host is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                return
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return
        time.sleep(0.02)


def plan_done(snapshot: Snapshot | None) -> bool:
    """Nothing runs and nothing is queued to run (a held plan waits for `continue`)."""
    return snapshot is None or (snapshot.state in (ev.IDLE, ev.CLOSED) and (not snapshot.plan or snapshot.held))


def describe(event: ev.Event) -> str:
    """One line for a person: the event's kind and its fields."""
    if isinstance(event, ev.Progress):
        return (f"{event.phase} step {event.step} ({event.job_step}/{event.job_total})  loss {event.loss:.4f}  "
                f"{event.steps_per_s:,.0f} steps/s")
    if isinstance(event, ev.LogLine):
        return f"{event.level}: {event.message}"
    fields = {k: v for k, v in event_to_wire(event).items() if k != "kind"}
    return f"{type(event).__name__}: " + "  ".join(f"{k}={v}" for k, v in fields.items())


def _progress_due(event: ev.Progress, shown: float) -> bool:
    return event.job_step == event.job_total or time.monotonic() - shown >= PROGRESS_EVERY_S


def _key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE a whole number, a number or text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"Give command arguments as KEY=VALUE, not {text!r}.")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


COMMANDS = {"ps": cmd_ps, "remote": cmd_remote, "tail": cmd_tail, "stop": cmd_stop}
