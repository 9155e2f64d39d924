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
                                        ("lr", "0"), ("batch_size", "0"), ("cluster_on", "evil")])
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
