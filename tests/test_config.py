"""Config validation: every invalid setting is a ConfigError naming its flag."""

from __future__ import annotations

import math

import pytest

from engine.config import Config, parse_hidden
from engine.errors import ConfigError


def test_defaults_study_fc2_of_two_hidden_layers():
    config = Config()
    assert config.hidden == (128, 128)
    assert config.studied_layer == 2
    assert config.layer_shape == (128, 128)


def test_layer_shape_is_out_by_in():
    config = Config(hidden=(64, 32, 16), layer=3)
    assert config.layer_shape == (16, 32)


@pytest.mark.parametrize("text, widths", [("128,128", (128, 128)), (" 64, 32 ,16", (64, 32, 16)), ([8, 4], (8, 4))])
def test_parse_hidden(text, widths):
    assert parse_hidden(text) == widths


@pytest.mark.parametrize("text", ["128", "a,b", "128,0", "128,1", "", "128,-4"])
def test_bad_hidden(text):
    with pytest.raises(ConfigError, match="--hidden"):
        parse_hidden(text)


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"k": 1}, "--k"),
        ({"k": 129}, "--k"),
        ({"k": 2.0}, "--k"),
        ({"lam": -1.0}, "--lam"),
        ({"lam": math.nan}, "--lam"),
        ({"lam": math.inf}, "--lam"),
        ({"lr": 0.0}, "--lr"),
        ({"lr": -1e-3}, "--lr"),
        ({"lr": math.nan}, "--lr"),
        ({"batch_size": 0}, "--batch-size"),
        ({"epochs": -1}, "--epochs"),
        ({"steps": -1}, "--steps"),
        ({"finetune_epochs": -1}, "--finetune-epochs"),
        ({"dataset": "cifar"}, "--dataset"),
        ({"cluster_on": "biases"}, "--cluster-on"),
        ({"device": "tpu"}, "--device"),
        ({"layer": 1}, "--layer"),
        ({"layer": 3}, "--layer"),
        ({"eval_every": 0}, "--eval-every"),
        ({"autosave_every": 0}, "--autosave-every"),
    ],
)
def test_invalid_settings_name_their_flag(changes, flag):
    with pytest.raises(ConfigError, match=flag):
        Config(**changes)


def test_k_is_bounded_by_the_studied_layer_width():
    Config(hidden=(64, 8), k=8)
    with pytest.raises(ConfigError, match="from 2 to 8"):
        Config(hidden=(64, 8), k=9)


def test_round_trip_and_replace():
    config = Config(dataset="synthetic", hidden=(16, 8), k=3, lam=1.5)
    assert Config.from_dict(config.to_dict()) == config
    changed = config.replace(k=4)
    assert changed.k == 4 and config.k == 3
    with pytest.raises(ConfigError):
        config.replace(k=100)


def test_unknown_field_refused():
    with pytest.raises(ConfigError, match="bogus"):
        Config.from_dict({**Config().to_dict(), "bogus": 1})
