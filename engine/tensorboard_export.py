"""`clusterlab export NAME --tensorboard DIR`: a session, or every member of a sweep, as TensorBoard runs."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ConfigError, SessionError
from engine.export import flat_record, session_config, studied_weights
from engine.picture import block_picture
from engine.session import atomic_write, read_snapshot, saved_records, session_file
from engine.sweep import is_sweep, read_manifest

# One fixed name per run, so a second export replaces the first instead of adding a twin of every curve.
EVENT_FILE = "events.out.tfevents.clusterlab"
# Record keys that place a record rather than measure something.
_PLACES = {"type", "step", "epoch"}


@dataclass(frozen=True)
class _Run:
    """What one run shows, read from a session before anything is written."""

    records: list[dict]  # the metrics log
    step: int  # the session's step, where its results and block picture stand
    picture: np.ndarray | None  # |W| by cluster as RGB, if it has clusters
    settings: dict  # its config, as hparams
    results: dict  # its last figures, as the hparams view's metrics


def export_tensorboard(target: Path, out_dir: Path, notes: list[str]) -> list[Path]:
    """Write `target`'s runs into the logdir `out_dir`; returns the event files written. A session is one run
    (out_dir itself); a sweep's members are one run each (out_dir/MEMBER), and out_dir itself holds the one
    experiment that makes TensorBoard's hparams view compare them. Members not started yet are left out, each
    with a sentence in `notes`."""
    writer_class, hparams = _tensorboard()
    target, out_dir = Path(target), Path(out_dir)
    if not is_sweep(target):
        runs = [(target, out_dir)]
    else:
        runs = []
        for name in read_manifest(target)["members"]:
            member = target.parent / name
            if session_file(member).is_file():
                runs.append((member, out_dir / name))
            else:
                notes.append(f"{name} has not started yet, so it has no run.")
        if not runs:
            raise SessionError(f"No member of the sweep {target.name} has started yet; run it first.")
    # every run is read and checked before anything is written: a bad member leaves no half export
    read = [(_read(session_dir), run_dir) for session_dir, run_dir in runs]
    written = []
    for run, run_dir in read:
        with _event_file(writer_class, run_dir) as writer:
            _write_run(writer, run)
            summaries = hparams(run.settings, run.results)
            for summary in summaries if len(read) == 1 else summaries[1:]:  # a lone run is its own experiment
                writer.file_writer.add_summary(summary)
        written.append(run_dir / EVENT_FILE)
    if len(read) > 1:  # the one experiment of the sweep: every setting any member has, every result
        settings = {key: value for run, _ in read for key, value in run.settings.items()}
        results = {key: 0.0 for run, _ in read for key in run.results}
        with _event_file(writer_class, out_dir) as writer:
            writer.file_writer.add_summary(hparams(settings, results)[0])
        written.append(out_dir / EVENT_FILE)
    return written


def _tensorboard():
    """The writer and hparams summaries (torch's, on the tensorboard package's event files), imported only here."""
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'.") from None
    return SummaryWriter, hparams


def _read(session_dir: Path) -> _Run:
    session, state = read_snapshot(session_dir)  # one save, even while the session runs
    config = session_config(session, session_dir)
    records = saved_records(session_dir, session)
    picture = None
    if session.get("clusters"):
        clusters = session["clusters"]
        weight = studied_weights(session, state, session_dir, config)[config.studied_layer - 1].numpy()
        found = block_picture(weight, clusters["row_labels"], clusters["col_labels"], int(clusters["k"]),
                              *weight.shape)
        picture = _colored(np.array(found.values, dtype=float))
    settings = {key: ",".join(map(str, value)) if isinstance(value, list) else value
                for key, value in config.to_dict().items() if value is not None}
    return _Run(records, int(session["step"]), picture, settings, _results(session.get("history") or []))


def _results(history: list[dict]) -> dict:
    """The last phase's test accuracy and clusterability, and the last null's every measure and p."""
    results = {}
    if history:
        for key in ("test_accuracy", "clusterability"):
            if history[-1].get(key) is not None:
                results[f"result/{key}"] = history[-1][key]
    tested = next((e["significance"] for e in reversed(history) if e.get("significance")), None)
    for name, values in ((tested or {}).get("measures") or {}).items():
        results.update({f"result/{name}_{stat}": values[stat] for stat in ("observed", "null_mean", "p")})
    return results


def _write_run(writer, run: _Run) -> None:
    """Every number of every metrics record as a scalar `TYPE/KEY` (a null's measures flattened: significance/
    ncut_p …), each phase's end as text, the block picture of each clustering and at the session's step, and the
    results at the session's step."""
    for record in run.records:
        kind, step = record.get("type"), int(record.get("step", 0))
        for key, value in flat_record(record).items():
            if key not in _PLACES and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(f"{kind}/{key}", value, step)
        if kind == "phase":
            writer.add_text("phases", _phase_text(record), step)
    pictured = set()
    for record in run.records:  # each clustering's blocks as found, then the layer now under the held clusters
        if record.get("type") == "clusters" and record.get("picture"):
            writer.add_image("weights/by_cluster", _colored(np.array(record["picture"], dtype=float)),
                             int(record["step"]), dataformats="HWC")
            pictured.add(int(record["step"]))
    if run.picture is not None and run.step not in pictured:
        writer.add_image("weights/by_cluster", run.picture, run.step, dataformats="HWC")
    for key, value in run.results.items():  # the scalars the hparams view reads its metrics from
        writer.add_scalar(key, value, run.step)


def _phase_text(record: dict) -> str:
    accuracy = record.get("test_accuracy")
    text = f"{record['phase']} ended at step {record['step']} after {record.get('steps', 0)} steps"
    if record.get("lam") is not None:
        text += f" (λ={record['lam']:g})"
    return text + ("" if accuracy is None else f"; test accuracy {accuracy:.4f}") + \
        ("; stopped" if record.get("stopped") else "")


def _colored(values: np.ndarray) -> np.ndarray:
    """|W| scaled to [0, 1] as viridis RGB, the colours of the exported weights figure."""
    from matplotlib import colormaps

    return colormaps["viridis"](np.clip(values, 0.0, 1.0))[..., :3].astype(np.float32)


class _event_file:
    """A SummaryWriter on a temporary folder; on a clean exit its event file replaces the run's atomically."""

    def __init__(self, writer_class, run_dir: Path) -> None:
        self.writer_class, self.run_dir = writer_class, run_dir

    def __enter__(self):
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SessionError(f"Cannot create {self.run_dir} ({exc.strerror}); pick another --tensorboard "
                               "folder.") from None
        self.temp = Path(tempfile.mkdtemp(dir=self.run_dir, prefix=".tensorboard-"))
        self.writer = self.writer_class(str(self.temp))
        return self.writer

    def __exit__(self, kind, value, traceback) -> None:
        self.writer.close()
        try:
            if kind is None:
                (written,) = self.temp.glob("events.out.tfevents.*")
                atomic_write(self.run_dir / EVENT_FILE, written.read_bytes())
        finally:
            shutil.rmtree(self.temp, ignore_errors=True)
