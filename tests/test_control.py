"""The λ=0 control: a twin of the finetune from the same state and data order, without the regulariser."""

from __future__ import annotations

from engine import Engine
from tests.conftest import small_config


def finished(engine: Engine):
    assert engine.wait(60)
    snap = engine.snapshot()
    engine.close()
    return snap


def test_the_control_twin_equals_a_plain_lambda_zero_finetune_and_changes_nothing(sessions):
    config = small_config(lam=5.0, finetune_epochs=1, eval_every=16)
    with_control = Engine.create(sessions / "with", config.replace(control=True))
    with_control.plan_default()
    snap = finished(with_control)
    assert [h["phase"] for h in snap.history] == ["pretrain", "cluster", "control", "finetune"]

    plain = Engine.create(sessions / "plain", config)
    plain.plan_default()
    plain_snap = finished(plain)
    assert plain_snap.params_sha256 == snap.params_sha256  # the twin left the finetune exactly as it was
    assert plain_snap.control is None and plain_snap.accuracy_cost is None

    zero = Engine.create(sessions / "zero", config)
    zero.train()
    zero.cluster()
    zero.finetune(lam=0.0)
    zero_snap = finished(zero)
    assert snap.control["params_sha256"] == zero_snap.params_sha256
    assert snap.control["test_accuracy"] == zero_snap.test_accuracy
    assert snap.accuracy_cost == snap.control["test_accuracy"] - snap.test_accuracy
    assert snap.to_dict()["control"] == snap.control and "accuracy_cost" in snap.to_dict()


def test_a_control_stopped_midway_starts_over_on_resume_and_gives_the_same_result(sessions):
    config = small_config(lam=5.0, finetune_epochs=3, control=True)
    reference = Engine.create(sessions / "ref", config)
    reference.plan_default()
    expected = finished(reference)

    engine = Engine.create(sessions / "cut", config)
    engine.plan_default()
    while engine.snapshot().phase != "control":
        engine.wait(0.01)
    engine.close()  # mid-control (or just after): the plan keeps what is left
    resumed = Engine.open(sessions / "cut")
    resumed.continue_plan()
    snap = finished(resumed)
    assert snap.params_sha256 == expected.params_sha256 and snap.control == expected.control
