"""A footer that keeps the keys that matter when the terminal is narrow, dropping the least needed first."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.events import Resize
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

# Actions by need, most needed first: a narrow footer drops from the end (stopping, the tabs, help and quitting
# always fit at 60 columns; every key is in the help).
NEED = ("quit", "help", "stop", "tab", "dismiss", "pause", "resume", "train", "cluster", "finetune", "save", "open",
        "detach", "new")


def need(key: FooterKey) -> int:
    action = key.action.rsplit(".", 1)[-1].split("(")[0]
    return NEED.index(action) if action in NEED else len(NEED)


def width(key: FooterKey) -> int:
    """Cells a compact footer key takes: its key, a space, its description, the margin after it."""
    return len(key.key_display) + 1 + len(key.description) + 1


class FitFooter(Footer):
    """Footer(compact=True) laid out for its width: keys that do not fit are left out, least needed first."""

    def __init__(self, **kwargs) -> None:
        super().__init__(compact=True, **kwargs)
        self._laid_out_at = 0

    def compose(self) -> ComposeResult:
        keys = list(super().compose())
        room = self.size.width or self.app.size.width
        self._laid_out_at = room
        footer_keys = [key for key in keys if isinstance(key, FooterKey)]
        for key in sorted(footer_keys, key=need, reverse=True):
            if sum(width(k) for k in footer_keys) <= room:
                break
            footer_keys.remove(key)
            keys.remove(key)
        yield from keys

    def on_resize(self, event: Resize) -> None:
        if event.size.width != self._laid_out_at:
            self.call_after_refresh(self.recompose)
