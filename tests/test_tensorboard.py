"""`clusterlab export NAME --tensorboard DIR`, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.session import METRICS_FILE, read_metrics
from engine.sweep_run import run_sweep

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard extra is not installed")
from tensorboard.plugins.hparams import metadata as hparams_metadata  # noqa: E402

TINY = {"dataset": "synthetic", "hidden": (16, 16), "device": "cpu", "steps": 20, "finetune_epochs": 1,
        "autosave_every": 10**6, "eval_every": 10**6, "null_samples": 19}


def read_run(run_dir: Path):
    run = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    run.Reload()
    return run


def texts(run, tag: str) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in run.Tensors(f"{tag}/text_summary")]


def session_hparams(run) -> dict:
    start = hparams_metadata.parse_session_start_info_plugin_data(
        run.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG])
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}


def test_a_session_exports_every_scalar_its_phases_picture_and_settings(sessions, make_engine, capsys, tmp_path):
    engine = make_engine("tb", steps=64, eval_every=16, control=True, null_samples=19)
    engine.plan_default()
    assert engine.wait(60)
    engine.close()
    out = tmp_path / "logs"
    assert main(["export", "tb", "--tensorboard", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / "events.out.tfevents.clusterlab")]
    run = read_run(out)
    scalars = run.Tags()["scalars"]
    for tag in ("train/loss", "eval/test_accuracy", "eval/clusterability", "clusters/clusterability",
                "clusters/chance", "phase/lam", *(f"significance/{m}_{s}" for m in ("clusterability", "ncut",
                                                                                   "newman_q")
                                                  for s in ("observed", "null_mean", "p"))):
        assert tag in scalars, tag
    logged = [(r["step"], pytest.approx(r["loss"])) for r in read_metrics(sessions / "tb" / METRICS_FILE)
              if r["type"] == "train"]
    assert [(e.step, e.value) for e in run.Scalars("train/loss")] == logged
    assert [(e.step, e.value) for e in run.Scalars("phase/lam")] == [(64, 0.0), (128, pytest.approx(5.0))]
    p = run.Scalars("significance/clusterability_p")
    assert all(1 / 20 <= e.value <= 1 for e in p) and [e.step for e in p] == [64, 128]
    assert [t.split(" ended")[0] for t in texts(run, "phases")] == ["pretrain", "cluster", "control", "finetune"]
    # one picture per clustering (the blocks as found at step 64), and the finetuned layer under them at the end
    images = run.Images("weights/by_cluster")
    assert [(i.step, i.width, i.height) for i in images] == [(64, 32, 32), (128, 32, 32)]  # fc2 of a 32-32 MLP
    assert images[0].encoded_image_string != images[1].encoded_image_string
    settings = session_hparams(run)
    assert settings["lr"] == pytest.approx(0.001) and settings["hidden"] == "32,32" and settings["control"] == 1
    assert hparams_metadata.EXPERIMENT_TAG in run.PluginTagToContent("hparams")  # a lone run is its own experiment
    final = engine.snapshot()
    assert run.Scalars("result/test_accuracy")[0].value == pytest.approx(final.test_accuracy)
    # a second export replaces the first instead of doubling every curve
    assert main(["export", "tb", "--tensorboard", str(out)]) == 0
    assert len(read_run(out).Scalars("train/loss")) == len(logged)
    assert [p.name for p in out.iterdir()] == ["events.out.tfevents.clusterlab"]


def test_a_sweep_exports_each_member_as_a_run_of_one_experiment(sessions, capsys, tmp_path):
    run_sweep("sw", TINY, {"seeds": [1, 2], "lam": [5]}, root=sessions)
    out = tmp_path / "logs"
    assert main(["export", "sw", "--tensorboard", str(out)]) == 0
    members = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert members == sorted(f"sw.s{s}{rest}" for s in (1, 2) for rest in ("", ".weights.k2", ".weights.k2.lam0",
                                                                           ".weights.k2.lam5"))
    experiment = hparams_metadata.parse_experiment_plugin_data(
        read_run(out).PluginTagToContent("hparams")[hparams_metadata.EXPERIMENT_TAG])
    assert {"seed", "lam", "lr"} <= {info.name for info in experiment.hparam_infos}
    assert "result/test_accuracy" in {info.name.tag for info in experiment.metric_infos}
    for name in members:
        run = read_run(out / name)
        assert hparams_metadata.EXPERIMENT_TAG not in run.PluginTagToContent("hparams")  # only the sweep's one
        assert session_hparams(run)["seed"] == float(name[len("sw.s")])
        assert run.Scalars("result/test_accuracy")
    finetuned = session_hparams(read_run(out / "sw.s2.weights.k2.lam5"))
    assert finetuned["lam"] == pytest.approx(5.0)


def test_bad_requests_are_one_sentence(sessions, make_engine, capsys, tmp_path):
    assert main(["export", "nothing", "--tensorboard", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    make_engine("some").close()
    assert main(["export", "some", "--tensorboard", str(tmp_path / "x"), "--out", str(tmp_path / "y")]) == 2
    assert "give one of them" in capsys.readouterr().err
