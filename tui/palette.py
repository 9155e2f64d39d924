"""The command palette (Ctrl+P): every action of the UI by name, with its key, only those that make sense now;
and what writes into a session's export folder from the UI (the export, a screenshot)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content
from textual.dom import DOMNode

from engine.session import atomic_write, session_path
from tui.messages import Command

SOURCES = ("weights", "gradients")  # the cluster sources the settings pane offers


@dataclass(frozen=True)
class Entry:
    """One palette command: its name, key (empty: the palette only), help, and what it runs."""

    title: str
    key: str
    help: str
    run: Callable[[], object]


class ClusterlabCommands(Provider):
    """The app's and the session screen's keys, cluster on each source, ablate and export, by name."""

    async def discover(self) -> Hits:
        for entry in entries(self.app, self.screen):
            yield DiscoveryHit(_shown(entry, Content(entry.title)), entry.run, text=entry.title, help=entry.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for entry in entries(self.app, self.screen):
            score = matcher.match(entry.title)
            if score > 0:
                yield Hit(score, _shown(entry, matcher.highlight(entry.title)), entry.run, text=entry.title,
                          help=entry.help)


def entries(app, screen) -> list[Entry]:
    """What the palette opened on `screen` offers now: each binding its owner allows now (as the footer shows),
    then the commands that have no key."""
    view = app.view
    if screen is not view:  # a sweep's view or a dialog: the session's keys do not reach its screen now
        return list(_bindings(app, type(app).BINDINGS))
    found = [*_bindings(view, type(view).BINDINGS), *_bindings(app, type(app).BINDINGS)]
    if view.check_action("cluster", ()) and app.client is not None:
        current = view.control.cluster_args()[1]
        found += [Entry(f"Cluster on {source}", "c" if source == current else "",
                        f"co-cluster the studied layer's {source} with the settings pane's k",
                        partial(_cluster_on, view, source)) for source in SOURCES]
    snapshot = view.snapshot
    if app.client is not None and snapshot is not None:
        if snapshot.clusters is not None:
            found.append(Entry("Ablate", "", "silence each cluster in turn: per-class accuracy drops (tab 4)",
                               partial(view.post_message, Command("ablate", "ablate the clusters"))))
        found.append(Entry("Export", "", f"metrics.csv, clusters.json and figures of the last save into "
                           f"{session_path(snapshot.name) / 'export'}", partial(_export, app, snapshot.name)))
    return found


def _bindings(node: DOMNode, bindings) -> Iterator[Entry]:
    for binding in bindings:
        action, params = _parsed(binding.action)
        if action != "command_palette" and node.check_action(action, params):
            if action == "tab":  # the footer's one "1-4 Tabs" entry: the palette names each tab, with its own key
                yield Entry(str(params[0]).capitalize(), binding.key, binding.tooltip,
                            partial(node.run_action, binding.action))
            else:
                key = binding.key_display or node.app.get_key_display(binding)
                yield Entry(binding.description, key, binding.tooltip, partial(node.run_action, binding.action))


def _parsed(action: str) -> tuple[str, tuple]:
    """tab('log') -> ("tab", ("log",)), as Textual parses an action string."""
    from textual.actions import parse

    _, name, params = parse(action)
    return name, params


async def _cluster_on(view, source: str) -> None:
    """Cluster as `c` does, from the settings pane, with its source set to `source` (so the pane shows it)."""
    from textual.widgets import Select

    view.query_one("#source", Select).value = source
    await view.run_action("cluster")


def _export(app, name: str) -> None:
    """`clusterlab export NAME` in its own process (it reads the checkpoint with torch, which the UI never loads);
    says where the files went, or why not."""

    async def export() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.cli", "export", name, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        if process.returncode == 0:
            message = f"Exported {len(out.splitlines())} files to {session_path(name) / 'export'}."
        else:
            message = err.decode().strip().splitlines()[-1] if err.strip() else "The export failed."
        app.view.control.show_message(message, error=process.returncode != 0)
        app.view.log_pane.add(message, "info" if process.returncode == 0 else "error")

    app.view.control.show_message("Exporting the last save…")
    app.run_worker(export(), group="export")


def save_screenshot(app) -> Path:
    """The current screen as SVG (Textual's own screenshot) in the session's export folder, written atomically."""
    folder = session_path(app.session_name) / "export"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"screen-{datetime.now():%Y%m%d-%H%M%S-%f}.svg"
    atomic_write(path, app.export_screenshot().encode())
    return path


def _shown(entry: Entry, title: Content) -> Content:
    """The command's name, and its key beside it."""
    return title + Content.styled(f"  {entry.key}", "dim") if entry.key else title
