"""What a checkpoint's trainer state must hold to continue the session it belongs to: every tensor's shape, dtype
and range against the trainer it is loaded into, and its counters against each other (the data order's position
against the step, captured gradients against steps). A state that passes continues bit for bit; one that does not
is refused in one sentence before anything is loaded, since a wrong `perm` or `position` would train on and finish
with another result, or fail every retry mid-job."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import whole_number
from engine.errors import SessionError
from engine.trainer import Trainer

_DAMAGED = "the checkpoint is damaged; restore the session folder from a backup, or start the session again"


def check_trainer_state(state: object, trainer: Trainer, path: Path, session: Path) -> None:
    """Refuse (SessionError naming `path`, the checkpoint) a trainer state that `trainer` could not continue from
    exactly as the run that saved it would have; `session` names the session.json whose config built `trainer`."""
    if not isinstance(state, dict):
        raise SessionError(f"{path} holds no trainer state (an object was expected); {_DAMAGED}.")
    template = trainer.state_dicts([0])[0]  # the shapes and dtypes of this model's state
    shapes = _shape_problem(state.get("model"), template["model"], path, session)
    if shapes:
        raise SessionError(shapes)
    problem = _field_problem(state, template, trainer)
    if problem:
        raise SessionError(f"{path}: trainer field {problem}; {_DAMAGED}.")


def _shape_problem(model: object, expected: dict, path: Path, session: Path) -> str | None:
    """One sentence if the checkpoint's layers are not the ones the session's config describes (which shapes
    disagree, and what to do); None if they are."""
    if not isinstance(model, dict) or list(model) != list(expected):
        names = list(model) if isinstance(model, dict) else type(model).__name__
        return f"{path} holds the layers {names}, not the {list(expected)} of its session's model; {_DAMAGED}."
    if not all(isinstance(w, torch.Tensor) for w in model.values()):
        return f"{path} holds a layer that is no tensor; {_DAMAGED}."
    wrong = [f"{name} is {tuple(w.shape)}, not {tuple(expected[name].shape)}"
             for name, w in model.items() if w.shape != expected[name].shape]
    if not wrong:
        return None
    hidden = ",".join(str(w.shape[0]) for w in list(model.values())[:-1] if w.dim() == 2)
    return (f"{path} does not fit the model that {session}'s config describes ({'; '.join(wrong)}): the config or the"
            f" checkpoint was changed or swapped (the checkpoint's layers are --hidden {hidden}); put back the"
            " session's own config.hidden and checkpoint, or start a new session.")


def _field_problem(state: dict, template: dict, trainer: Trainer) -> str | None:
    """The first field of `state` (less its model's shapes) that `trainer` could not continue from, as a phrase."""
    legacy = "grad_importance" not in state  # saved before F (see Trainer.load_state_dicts)
    for key in template:
        if key not in state and not (legacy and key in ("grad_importance", "legacy_gradients")):
            return f"'{key}' is missing"
    model = state["model"]
    for name, w in model.items():
        if w.dtype != torch.float32 or not bool(torch.isfinite(w).all()):
            return f"'model.{name}' must be finite float32 weights"
    optimizer, lr = state["optimizer"], float(trainer.config.lr)
    if not isinstance(optimizer, dict) or optimizer.get("name") != "sgd" or optimizer.get("lr") != lr:
        return f"'optimizer' must be plain SGD at the config's lr {lr!r}, not {_show(optimizer)}"
    if not _tensor_like(state["generator"], template["generator"]):
        return f"'generator' must be a random generator's state ({_describe(template['generator'])})"
    step, position, n = state["step"], state["position"], trainer.data.n_train
    if not (whole_number(step) and step >= 0):
        return f"'step' must be a whole number of 0 or more, not {_show(step)}"
    perm = state["perm"]
    if perm is None and step > 0:
        return f"'perm' is missing: a session at step {step} is part way through an epoch's order of the data"
    if perm is not None and not (isinstance(perm, torch.Tensor) and perm.dtype == torch.int64 and perm.shape == (n,)
                                 and torch.equal(perm.sort().values, torch.arange(n))):
        return f"'perm' must be an order of the {n} training images (each index from 0 to {n - 1} once)"
    # Each step takes the next batch of the epoch's order: after step s the position is where batch s ended.
    expected = 0 if step == 0 else ((step - 1) % trainer.steps_per_epoch + 1) * trainer.batch_size
    if not (whole_number(position) and position == expected):
        return f"'position' must be {expected} (where step {step}'s batch ended in its epoch), not {_show(position)}"
    grad_steps = state["grad_steps"]
    if not (whole_number(grad_steps) and 0 <= grad_steps <= step):
        return f"'grad_steps' must be a whole number from 0 to the step {step}, not {_show(grad_steps)}"
    if not legacy:
        importance = state["grad_importance"]
        if not (_tensor_like(importance, template["grad_importance"]) and bool(torch.isfinite(importance).all())
                and bool((importance >= 0).all())):
            return f"'grad_importance' must be finite, non-negative {_describe(template['grad_importance'])}"
        pending, most = state["grad_pending"], min(trainer.pending_max - 1, grad_steps)
        if not (isinstance(pending, torch.Tensor) and pending.dtype == torch.float32 and pending.dim() == 3
                and pending.shape[1:] == template["grad_pending"].shape[1:] and pending.shape[0] <= most
                and bool(torch.isfinite(pending).all())):
            return (f"'grad_pending' must be at most {most} finite float32 gradients of shape "
                    f"{tuple(template['grad_pending'].shape[1:])}")
        if not isinstance(state["legacy_gradients"], bool):
            return f"'legacy_gradients' must be true or false, not {_show(state['legacy_gradients'])}"
    return None


def _tensor_like(value: object, template: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == template.dtype and value.shape == template.shape


def _describe(template: torch.Tensor) -> str:
    return f"a {str(template.dtype).removeprefix('torch.')} tensor of shape {tuple(template.shape)}"


def _show(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
