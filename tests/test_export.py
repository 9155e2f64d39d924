"""Export of a session's data and figures, and ablation of a saved session, on a small synthetic session."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Engine, SessionError
from engine.data import load_dataset
from engine.export import ablate_session, export_session
from engine.measures import MEASURES, MeasureNull, NullResult
from engine.model import build_mlp
from engine.session import METRICS_FILE, SESSION_FILE, load_checkpoint, read_metrics
from tests.conftest import small_config

FIGURES = ("curves", "weights", "ablation")


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    """Pretrained, clustered (k=2) and finetuned; closed, then given what the engine will log: significance
    records after clustering and finetuning, and the ablation in session.json."""
    path = tmp_path_factory.mktemp("sessions") / "small"
    engine = Engine.create(path, small_config(steps=64, eval_every=16))
    engine.train()
    engine.cluster(k=2)
    engine.finetune(epochs=1)
    assert engine.wait(60)
    engine.close()
    ablation = ablate_session(path, null_samples=20).to_dict()  # before the log grows past the save's count
    records = read_metrics(path / METRICS_FILE)
    null = NullResult("permute", "recluster", "weights", 20, {m.name: MeasureNull(0.5, 0.55, 0.01, 3.0, 1 / 21)
                                                              for m in MEASURES}).to_dict()
    extra = [{"type": "significance", "step": r["step"], "phase": "finetune" if i else "cluster",
              "clusterability": r["clusterability"], **null}
             for i, r in enumerate(r for r in records if r["type"] == "clusters" or r.get("phase") == "finetune"
                                   and r["type"] == "eval")]
    with open(path / METRICS_FILE, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in extra)
    data = json.loads((path / SESSION_FILE).read_text())
    data["metrics_records"] += len(extra)
    data["ablation"] = ablation
    data["significance"] = null
    data["control"] = {"test_accuracy": 0.25, "clusterability": 0.6, "significance": null, "step": data["step"],
                       "params_sha256": "0" * 64}  # as a --control session holds its λ=0 twin's end
    (path / SESSION_FILE).write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def exported(session, tmp_path_factory) -> tuple[Path, list[Path], list[str]]:
    """The session exported once (figures take a second or two): the folder, the files written, the notes."""
    out = tmp_path_factory.mktemp("export") / "out"
    notes: list[str] = []
    return out, export_session(session, out, notes), notes


def svg_font_sizes(root: ET.Element) -> list[float]:
    """Font sizes (in pt, as matplotlib writes them: px at 72 per inch) of every text element of an SVG."""
    sizes = []
    for element in root.iter("{http://www.w3.org/2000/svg}text"):
        match = re.search(r"font(?:-size)?:\s*(?:[a-z]+\s+)*([\d.]+)px", element.get("style", ""))
        if match:
            sizes.append(float(match.group(1)))
    return sizes


def test_export_writes_every_file_and_the_figures_open(exported):
    import matplotlib.image

    out, written, notes = exported
    names = sorted(p.name for p in written)
    assert names == sorted(["metrics.csv", "clusters.json", "ablation.csv"]
                           + [f"{f}.{s}" for f in FIGURES for s in ("png", "svg")])
    assert notes == [] and all(p.is_file() and p.parent == out for p in written)
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files left behind
    for figure in FIGURES:
        image = matplotlib.image.imread(out / f"{figure}.png")
        assert image.shape[1] == pytest.approx(3.3 * 300, abs=2)  # a column wide at 300 dpi
        assert image[..., :3].std() > 0.05  # something was drawn
        root = ET.parse(out / f"{figure}.svg").getroot()
        assert root.get("width") == "237.6pt"  # 3.3 in
        sizes = svg_font_sizes(root)
        assert sizes and min(sizes) >= 7, (figure, sizes)
    curves = ET.parse(out / "curves.svg").getroot()
    texts = "".join(t.text or "" for t in curves.iter("{http://www.w3.org/2000/svg}text"))
    assert "shuffle null ±2σ" in texts and "pretrain" in texts and "finetune" in texts


def test_metrics_csv_holds_every_logged_record(session, exported):
    logged = [json.loads(line) for line in (session / METRICS_FILE).read_text().splitlines()]
    with open(exported[0] / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(logged)
    assert {"type", "step", "loss", "test_accuracy", "clusterability", "row_sizes"} <= set(rows[0])
    # a null's measures are columns of their own, every measure of the registry with its null and p
    assert {f"{m.name}_{stat}" for m in MEASURES for stat in ("observed", "null_mean", "null_std", "z", "p")} <= set(
        rows[0])
    nulls = [row for row in rows if row["type"] == "significance"]
    assert nulls and all(0 < float(row["newman_q_p"]) <= 1 for row in nulls)
    assert float(nulls[-1]["newman_q_p"]) == pytest.approx(1 / 21)  # the record appended above
    for row, record in zip(rows, logged, strict=True):
        assert row["type"] == record["type"] and int(row["step"]) == record["step"]
        if "row_sizes" in record:
            assert json.loads(row["row_sizes"]) == record["row_sizes"]


def test_clusters_json_and_ablation_csv_carry_the_sessions_numbers(session, exported):
    out = exported[0]
    data = json.loads((session / SESSION_FILE).read_text())
    assert json.loads((out / "clusters.json").read_text()) == {"layer": "fc2", **data["clusters"],
                                                               "significance": data["significance"]}
    ablation = data["ablation"]
    with open(out / "ablation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(ablation["classes"])
    assert sorted({int(row["cluster"]) for row in rows}) == [1, 2]  # numbered as everywhere else
    for row in rows:
        i, c = int(row["cluster"]) - 1, ablation["classes"].index(int(row["class"]))
        assert float(row["drop"]) == ablation["drop"][i][c]
        assert float(row["specialisation"]) == ablation["specialisation"][i]
        assert float(row["p_value"]) == ablation["p_value"][i]
        assert float(row["baseline_accuracy"]) - float(row["ablated_accuracy"]) == pytest.approx(float(row["drop"]))


def test_ablate_session_equals_zeroing_the_clusters_rows_in_the_checkpoint(session):
    data = json.loads((session / SESSION_FILE).read_text())
    result = ablate_session(session, null_samples=5)
    assert result.drop == tuple(tuple(r) for r in data["ablation"]["drop"])  # same session, same numbers
    assert result.null_samples == 5 and result.null_seed == 42

    config = small_config()
    test = load_dataset("synthetic", None, config.seed, torch.device("cpu"))
    state = load_checkpoint(session / data["checkpoint"])["trainer"]["model"]
    rows = torch.tensor(data["clusters"]["row_labels"])

    def per_class(fc2: torch.Tensor) -> np.ndarray:
        model = build_mlp(test.n_features, config.hidden, test.n_classes, seed=0)
        model.load_state_dict({**state, "fc2.weight": fc2})
        with torch.no_grad():
            correct = model(test.test_x).argmax(1) == test.test_y
        return np.array([correct[test.test_y == c].double().mean().item() for c in range(test.n_classes)])

    baseline = per_class(state["fc2.weight"])
    for i in range(2):
        ablated = per_class(torch.where((rows == i)[:, None], 0.0, state["fc2.weight"]))
        np.testing.assert_allclose(result.drop[i], baseline - ablated, atol=1e-6)


def test_missing_pieces_are_skipped_with_a_note(tmp_path):
    path = tmp_path / "fresh"
    with Engine.create(path, small_config(steps=16)) as engine:
        engine.train()
        assert engine.wait(30)
    notes: list[str] = []
    written = export_session(path, tmp_path / "out", notes)
    assert sorted(p.name for p in written) == ["curves.png", "curves.svg", "metrics.csv"]
    assert len(notes) == 2 and "No clusters yet" in notes[0] and "No ablation yet" in notes[1]
    with pytest.raises(SessionError, match="no clusters yet"):
        ablate_session(path)


def test_missing_or_corrupt_sessions_raise_one_sentence(session, tmp_path):
    with pytest.raises(SessionError, match="does not exist"):
        export_session(tmp_path / "nowhere", tmp_path / "out")
    broken = tmp_path / "broken"
    shutil.copytree(session, broken)
    (broken / SESSION_FILE).write_text("{not json")
    with pytest.raises(SessionError, match="corrupt"):
        export_session(broken, tmp_path / "out")

    data = json.loads((session / SESSION_FILE).read_text())
    (broken / SESSION_FILE).write_text(json.dumps({**data, "ablation": {"drop": [[0.1]]}}))
    with pytest.raises(SessionError, match="field 'ablation.units' is missing"):  # checked at open
        export_session(broken, tmp_path / "out")
    clusters = {**data["clusters"], "row_labels": data["clusters"]["row_labels"][:-1]}
    (broken / SESSION_FILE).write_text(json.dumps({**data, "clusters": clusters}))
    with pytest.raises(SessionError, match="row_labels"):
        export_session(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def svg_text(path: Path) -> str:
    return " ".join(t.text or "" for t in ET.parse(path).getroot().iter("{http://www.w3.org/2000/svg}text"))


def test_figures_say_what_they_show(session, exported):
    out = exported[0]
    data = json.loads((session / SESSION_FILE).read_text())
    last = data["history"][-1]  # the finetune's clusterability, with the null of that same measurement
    null = last["significance"]["measures"]["clusterability"]
    assert (f"clusterability {last['clusterability']:.4f} vs null {null['null_mean']:.4f} ± {null['null_std']:.4f}, "
            f"p = {null['p']:.3g}") in svg_text(out / "weights.svg")
    assert "U: specialisation, 1 − H(lost | class) / H(lost)" in svg_text(out / "ablation.svg")
    assert "λ=0 control" in svg_text(out / "curves.svg")


def test_curves_draw_the_tested_value_over_its_null_and_a_null_key_that_is_no_data_point(session):
    from matplotlib.patches import Patch

    from engine.export import curves_figure

    data = json.loads((session / SESSION_FILE).read_text())
    fig = curves_figure(read_metrics(session / METRICS_FILE), data["control"])
    clust = fig.axes[2]
    null = [a for a in clust.collections + clust.lines if a.get_zorder() == 1]
    tested = [line for line in clust.lines if line.get_marker() == "o"]
    assert null and tested and min(a.get_zorder() for a in tested) > max(a.get_zorder() for a in null)
    tested_steps = sorted(float(x) for line in tested for x in line.get_xdata())
    assert tested_steps == sorted(float(r["step"]) for r in read_metrics(session / METRICS_FILE)
                                  if r["type"] == "significance")
    keys = clust.get_legend().legend_handles
    assert isinstance(keys[0], Patch) and keys[0].get_label() == "shuffle null ±2σ"
    control = [line for line in fig.axes[1].lines if line.get_label() == "λ=0 control"]
    assert control and list(control[0].get_ydata()) == [data["control"]["test_accuracy"]]


def test_exports_follow_the_umask_and_sessions_stay_private(session, tmp_path):
    old = os.umask(0o022)
    try:
        written = export_session(session, tmp_path / "shared")
    finally:
        os.umask(old)
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {"0o644"}
    assert stat.S_IMODE((session / SESSION_FILE).stat().st_mode) in (0o600, 0o644)  # written by this test's fixture
    engine = Engine.open(session)
    engine.save()
    assert engine.wait(30)
    engine.close()
    assert stat.S_IMODE((session / SESSION_FILE).stat().st_mode) == 0o600
