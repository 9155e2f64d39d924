"""The command palette (Ctrl+P) and the screenshot key, under Pilot against a host served in this process."""

from __future__ import annotations

from textual.command import CommandPalette

from tests.test_tui_app import SIZE, client_app, hosts, idle, ready, tui_sessions  # noqa: F401 (fixtures)
from tests.test_tui_support import tui_config, until
from tui.palette import entries


def shown(app) -> dict[str, str]:
    return {entry.title: entry.key for entry in entries(app, app.screen)}


async def test_the_palette_offers_every_action_with_its_key_and_runs_one(hosts):  # noqa: F811
    app = client_app("pal", tui_config(epochs=1), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        idle_keys = shown(app)
        assert {title: idle_keys.get(title) for title in (
            "Train", "Cluster", "Save", "Charts", "Clusters", "Log", "Modules", "Open", "New", "Detach", "Help",
            "Screenshot", "Quit", "Cluster on weights", "Cluster on gradients", "Export")} == {
            "Train": "t", "Cluster": "c", "Save": "s", "Charts": "1", "Clusters": "2", "Log": "3", "Modules": "4",
            "Open": "o", "New": "n", "Detach": "d", "Help": "?", "Screenshot": "S", "Quit": "q",
            "Cluster on weights": "c", "Cluster on gradients": "", "Export": ""}
        assert not {"Pause", "Resume", "Finetune", "Ablate"} & set(idle_keys)  # nothing to pause, no clusters yet
        await pilot.press("t")
        await until(pilot, lambda: app.view.snapshot.step > 0, "training to start")
        await idle(pilot, app, hosts)

        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
        matches = app.screen.query_one("CommandList")
        await until(pilot, lambda: any(str(matches.get_option_at_index(i).prompt).startswith("Train  t\n")
                                       for i in range(matches.option_count)), "every command, with its key")
        await pilot.press(*"on grad")
        await until(pilot, lambda: matches.option_count and "Cluster on gradients" in str(
            matches.get_option_at_index(0).prompt), "the command, first")
        await pilot.press("enter")
        await until(pilot, lambda: (app.view.snapshot.clusters or {}).get("source") == "gradients",
                    "the layer clustered on gradients")
        await idle(pilot, app, hosts)
        assert {"Finetune": "f", "Ablate": ""}.items() <= shown(app).items()


async def test_the_screenshot_key_saves_the_screen_in_the_export_folder_and_says_where(hosts, tui_sessions):  # noqa: F811
    app = client_app("shot", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("S")
        folder = tui_sessions / "shot" / "export"
        await until(pilot, lambda: folder.is_dir() and list(folder.glob("*.svg")), "the screenshot")
        (svg,) = folder.glob("*.svg")
        assert svg.read_text().startswith("<svg") and "shot" in svg.read_text()
        assert f"Screenshot saved: {svg}" in str(app.query_one("#message").content)


async def test_export_from_the_palette_writes_the_last_save_and_says_where(hosts, tui_sessions):  # noqa: F811
    app = client_app("exp", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        (export,) = [entry for entry in entries(app, app.screen) if entry.title == "Export"]
        export.run()
        folder = tui_sessions / "exp" / "export"
        await until(pilot, lambda: "Exported" in str(app.query_one("#message").content), "the export", 120)
        assert f"to {folder}." in str(app.query_one("#message").content)
        assert (folder / "metrics.csv").is_file() and (folder / "curves.svg").is_file()
