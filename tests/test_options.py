"""Options are declared once: the CLI flag and the UI field parse and check a value with the same words."""

from __future__ import annotations

import pytest

from engine.config import Config
from engine.errors import ConfigError
from engine.options import BY_NAME, OPTIONS, config_from_texts
from tests.test_cli import one_line_error

SMALL = Config(dataset="synthetic", hidden=(32, 32), device="cpu")
BASE_FLAGS = ["run", "--dataset", "synthetic", "--hidden", "32,32", "--device", "cpu"]


@pytest.mark.parametrize("name, text", [("epochs", "x"), ("epochs", "-1"), ("steps", "1.5"), ("k", "two"),
                                        ("k", "40"), ("lam", "nan"), ("lam", "-1"), ("finetune_epochs", "-2"),
                                        ("lr", "0"), ("batch_size", "0"), ("cluster_on", "evil"),
                                        # Python's int()/float() take these; a command line's numbers are plain
                                        ("lr", "1_0"), ("epochs", "1_0"), ("lr", "inf"), ("k", "0x2"),
                                        ("hidden", "32,32,"), ("hidden", "3_2,32"),
                                        ("lam", "1e-50")])  # zero in float32: a second control, not a finetune
def test_a_bad_value_reads_the_same_in_the_cli_and_the_ui(capsys, sessions, name, text):
    option = BY_NAME[name]
    with pytest.raises(ConfigError) as ui_error:
        option.check(SMALL, text)  # what the UI's field validator runs
    cli_line = one_line_error(capsys, [*BASE_FLAGS, option.flag, text])
    assert cli_line == f"clusterlab: error: {ui_error.value}"
    assert option.flag in cli_line


def test_every_config_field_is_an_option_with_its_default():
    assert {o.name for o in OPTIONS} == set(Config().to_dict())
    assert BY_NAME["lam"].default == Config().lam and BY_NAME["steps"].default is None
    for option in OPTIONS:
        value = getattr(SMALL, option.name)
        assert option.parse(option.text(value)) == (None if value is None else
                                                     (",".join(map(str, value)) if option.name == "hidden" else value))


def test_empty_texts_keep_the_defaults():
    assert config_from_texts({"epochs": "", "k": " 3 ", "hidden": "16,16"}) == Config(k=3, hidden=(16, 16))


@pytest.mark.parametrize("name, text, value", [("lr", "1e-3", 1e-3), ("lr", ".5", 0.5), ("lr", "2.", 2.0),
                                               ("lam", "+3", 3.0), ("epochs", "007", 7), ("lam", "1E2", 100.0)])
def test_plain_decimals_still_parse(name, text, value):
    assert BY_NAME[name].parse(text) == value
