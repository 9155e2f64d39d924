"""Parse and check the control pane's text fields exactly as the CLI and engine check them."""

from __future__ import annotations

from engine.config import check_int, check_k, check_lam
from engine.errors import ConfigError


def parse_count(text: str, flag: str) -> int:
    """A whole number of 0 or more (epochs), with the engine's wording for a bad value."""
    value = _int(text, flag, "a whole number of 0 or more")
    check_int(flag, value, 0)
    return value


def parse_k(text: str, layer_shape: tuple[int, int]) -> int:
    """k from 2 to the studied layer's width, checked by the engine's own check_k."""
    try:
        value = int(text.strip())
    except ValueError:
        value = text.strip()  # check_k names the bad text in its message
    check_k(value, layer_shape)
    return int(value)


def parse_lam(text: str) -> float:
    """A finite λ of 0 or more, checked by the engine's own check_lam."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"--lam must be a finite number of 0 or more, not {text.strip()!r}.") from None
    check_lam(value)
    return value


def _int(text: str, flag: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{flag} must be {what}, not {text.strip()!r}.") from None
