"""A session name one typo away from an existing one: the UI asks before creating it; the CLI says so."""

from __future__ import annotations

from textual.widgets import Input

from engine import Engine
from engine.cli import main
from tests.conftest import small_config
from tests.test_tui_app import SIZE, client_app, hosts, quit_app, ready, tui_sessions  # noqa: F401 - fixtures
from tests.test_tui_support import tui_config, until
from tui.screens import ChoiceScreen, NewSessionScreen


def existing(root, name: str) -> None:
    Engine.create(root / name, small_config()).close()


async def test_a_name_close_to_an_existing_one_asks_before_creating(hosts, tui_sessions):  # noqa: F811
    existing(tui_sessions, "tui")
    app = client_app("tuil", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), "the question")
        assert "There is no session tuil, but there is tui" in str(app.screen.query_one("#question").content)
        assert not (tui_sessions / "tuil").exists()  # nothing is created before the answer
        await pilot.press("o")
        await ready(pilot, app)
        assert app.view.snapshot.name == "tui" and not (tui_sessions / "tuil").exists()

        await pilot.press("n")  # the new-session form asks too, and escape returns to it
        await until(pilot, lambda: isinstance(app.screen, NewSessionScreen), "the new-session form")
        app.screen.query_one("#field-name", Input).value = "tuii"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), "the question")
        assert "A session called tui exists. Create tuii as well?" in str(app.screen.query_one("#question").content)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, NewSessionScreen), "the form again")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), "the question again")
        await pilot.press("c")
        await ready(pilot, app)
        await until(pilot, lambda: app.view.snapshot.name == "tuii", "the new session")
        await quit_app(pilot, app)


async def test_create_answer_creates_the_typed_name(hosts, tui_sessions):  # noqa: F811
    existing(tui_sessions, "tui")
    app = client_app("tuil", tui_config(), hosts)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), "the question")
        await pilot.press("c")
        await ready(pilot, app)
        assert app.view.snapshot.name == "tuil" and (tui_sessions / "tuil" / "session.json").is_file()
        await quit_app(pilot, app)


def test_the_cli_names_the_session_a_typo_meant(sessions, capsys):
    existing(sessions, "tui")
    assert main(["resume", "tuil"]) == 2
    assert "(did you mean tui?)" in capsys.readouterr().err
    assert main(["run", "--dataset", "synthetic", "--hidden", "8,8", "--device", "cpu", "--steps", "2",
                 "--finetune-epochs", "0", "--null-samples", "0", "--session", "tuil"]) == 0
    err = capsys.readouterr().err
    assert "note: creating a new session tuil (close to the existing tui:" in err
