"""Config validation: every invalid setting is a ConfigError naming its flag."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from engine import config as config_module
from engine.cli import main
from engine.config import MAX_BATCH_SIZE, MAX_SEED, Config, available_memory, estimate_memory, parse_hidden
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


@pytest.mark.parametrize("text", ["128", "a,b", "128,0", "128,1", "", "128,-4", ["a", "b"], [2.5, 3], 5, None])
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


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"lr": 1e308}, "--lr"),  # finite as a float64, infinite in float32: the step would make inf weights
        ({"lr": 1e-50}, "--lr"),  # 0 in float32: nothing would train
        ({"lam": 1e300}, "--lam"),
        ({"lam": 3.5e38}, "--lam"),
        ({"seed": 2**32}, "--seed"),  # the clustering's k-means takes seeds below 2**32
        ({"seed": 99999999999999999999}, "--seed"),
        ({"batch_size": MAX_BATCH_SIZE + 1}, "--batch-size"),
        ({"batch_size": 99999999999999999999}, "--batch-size"),
        ({"lr": 10**400}, "--lr"),  # an int too large for a float
        ({"data_dir": 5}, "--data-dir"),
    ],
)
def test_values_the_training_cannot_hold_are_refused(changes, flag):
    with pytest.raises(ConfigError, match=flag):
        Config(**changes)


def test_the_largest_values_it_can_hold_are_accepted():
    Config(lr=3.4e38, lam=3.4e38, seed=MAX_SEED, batch_size=MAX_BATCH_SIZE, hidden=(8, 8))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": 0.0}, "--lr must be a positive number, not 0.0."),
        ({"lam": -1.0}, "--lam must be a finite number of 0 or more, not -1.0."),
        ({"batch_size": 0}, "--batch-size must be a whole number of 1 or more, not 0."),
        ({"seed": -1}, "--seed must be a whole number of 0 or more, not -1."),
        ({"hidden": "a,b"}, "--hidden must be comma-separated layer widths such as 128,128, not 'a,b'."),
    ],
)
def test_existing_messages_are_unchanged(changes, message):
    with pytest.raises(ConfigError) as info:
        Config(**changes)
    assert str(info.value) == message


JUNK = [None, "x", 1.5, True, -1, [1], {"a": 1}, 10**30, float("nan")]


@pytest.mark.parametrize("field", [f.name for f in fields(Config)])
def test_any_json_value_is_a_config_error_or_fine(field):
    """A session.json's config may hold anything: only ConfigError, never a TypeError, may come out."""
    for junk in JUNK:
        try:
            Config.from_dict({field: junk})
        except ConfigError:
            pass


def test_memory_estimate_known_answer():
    config = Config(hidden=(8, 6), batch_size=4)  # widths 784-8-6-10; studied fc2 is 6 x 8
    weights = 4 * (784 * 8 + 8 * 6 + 6 * 10)
    statistic = 8 * 8 * 8  # S is in x in, float64
    pending = 4 * 2**20  # the raw-gradient buffer: at most max(out * in, 2**20) floats
    activations = 4 * 4 * (784 + 8 + 6 + 10 + 2 * 784) + 4 * 10_000 * 2 * 784  # a batch of 4; the test set
    data = (4 * 784 + 8) * 70_000
    expected = 2 * (weights + statistic + pending) + activations + data + 4 * 4
    assert estimate_memory(config) == expected


def test_available_memory_is_read():
    assert available_memory() > 10**8


def test_a_run_too_large_for_memory_is_refused_before_any_work(capsys, monkeypatch, sessions):
    monkeypatch.setattr(config_module, "available_memory", lambda: 16 * 10**9)
    Config(hidden=(2048, 2048))
    assert main(["run", "--dataset", "synthetic", "--hidden", "100000,100000", "--session", "big"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--hidden 100000,100000 with --batch-size 64 needs about 329.0 GB" in err and "16.0 GB available" in err
    assert not (sessions / "big").exists()


@pytest.mark.parametrize("flags", [["--lr", "1e308"], ["--lam", "1e300"], ["--batch-size", "99999999999999999999"],
                                   ["--seed", "99999999999999999999"]])
def test_the_cli_refuses_them_with_rc_2_before_any_work(capsys, sessions, flags):
    assert main(["run", "--dataset", "synthetic", *flags, "--session", "s"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flags[0] in err and "Traceback" not in err
    assert not (sessions / "s").exists()
