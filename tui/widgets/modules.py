"""The Modules tab: the studied layer's |W| by cluster in half-block cells, and the cluster ablation table."""

from __future__ import annotations

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive, var
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from engine.config import Config
from engine.picture import BlockPicture
from engine.snapshot import Snapshot
from engine.stability import summary

HALF_BLOCK = "▀"  # foreground paints the upper matrix row of a terminal row, background the lower one
# A viridis-like ramp (dark blue to yellow) for |W| / scale; block boundaries are drawn in a colour it never has.
RAMP = ((0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
        (1.0, (253, 231, 37)))
BOUNDARY = (255, 64, 64)
NO_CLUSTERS = "No clusters yet: press c to cluster the layer."
NO_ABLATION = "No ablation yet: it runs after clustering."
NO_STABILITY = "stability: not measured; clusterlab stability {name}"
# Columns of the ablation table besides the classes: row label, specialisation, p.
LABEL_WIDTH, SPEC_WIDTH, P_WIDTH = 4, 6, 7


class BlockView(Widget):
    """|W| reordered by cluster, two matrix rows per terminal row, with a boundary line between blocks."""

    DEFAULT_CSS = "BlockView { height: 1fr; min-height: 3; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.picture: BlockPicture | None = None
        self.lines: list[Strip] = []
        self._stale = False  # a picture came while the tab was hidden: built when it shows

    def show(self, picture: BlockPicture | None) -> None:
        if picture == self.picture:
            return  # the same weights and clusters: nothing to redraw
        self.picture = picture
        if picture is None or self.is_on_screen:
            self._build()
        else:
            self._stale = True  # pictures come with every save while training: build only the one that is seen

    def on_show(self) -> None:
        if self._stale:
            self._build()

    def render_line(self, y: int) -> Strip:
        line = self.lines[y] if y < len(self.lines) else Strip.blank(0)
        return line.crop_extend(0, self.size.width, self.rich_style)

    def on_resize(self) -> None:
        self._build()  # a small layer's cells are enlarged to the new size until a new picture comes
        self.post_message(ModulesPane.PictureWanted())

    def _build(self) -> None:
        self._stale = False
        width, height = self.size
        self.lines = [] if self.picture is None else picture_strips(self.picture, width, 2 * height)
        self.refresh()


class ModulesPane(Vertical):
    """Shows what the engine sends: a BlockPicture (`show_picture`) and an ablation dict (`show_ablation`).

    It never computes either. `picture_size(k)` is the largest picture that fits with its k - 1 boundary lines;
    the pane posts PictureWanted when that size changes (mounted, resized, its tab shown).
    """

    DEFAULT_CSS = """
    ModulesPane { height: 1fr; }
    ModulesPane #modules-title { height: 1; padding: 0 1; color: $text-accent; }
    ModulesPane #ablation-table { height: auto; padding: 0 1; }
    ModulesPane #stability-line { height: auto; padding: 0 1; }
    """

    class PictureWanted(Message):
        """The picture area changed size: send a picture of `picture_size(k)`."""

    snapshot: reactive[Snapshot | None] = var(None, init=False)

    def compose(self) -> ComposeResult:
        yield Static(NO_CLUSTERS, id="modules-title")
        yield BlockView(id="block-view")
        yield Static(NO_ABLATION, id="ablation-table")
        yield Static("", id="stability-line")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ablation: dict | None = None
        self._stability = ""
        self._title = NO_CLUSTERS
        self._layer = ("", "W")  # (session folder, its studied layer's name)

    def picture_size(self, k: int) -> tuple[int, int] | None:
        """(max_rows, max_cols) for block_picture: the view's cells, two matrix rows each, less k - 1 boundary
        lines each way; None while the tab is hidden (no size yet)."""
        width, height = self.query_one(BlockView).size
        rows, cols = 2 * height - (k - 1), width - (k - 1)
        return (rows, cols) if rows > 0 and cols > 0 else None

    def show_picture(self, picture: BlockPicture, *, layer: str = "W", step: int | None = None) -> None:
        """Draw |W| of `layer` (e.g. "fc2"); the same picture again redraws nothing."""
        out, inp = picture.shape
        where = f"step {step:,}: " if step is not None else ""  # first: a narrow tab cuts the title's end
        self._show_title(f"{where}|{layer}| {out}x{inp} by cluster (k={picture.k})")
        self.query_one(BlockView).show(picture)

    def show_ablation(self, ablation: dict) -> None:
        """Draw the k x classes table of accuracy drops with each cluster's specialisation and p."""
        if ablation != self.ablation:
            self.ablation = ablation
            self._draw_ablation()

    def watch_snapshot(self, snap: Snapshot | None) -> None:
        """The snapshot's picture and ablation of the held clusters, or none."""
        if snap is None or snap.clusters is None:
            self.clear()
            return
        picture = snap.picture
        if isinstance(picture, BlockPicture):
            if self._layer[0] != snap.session:
                self._layer = (snap.session, f"fc{Config.from_dict(snap.config).studied_layer}")
            self.show_picture(picture, layer=self._layer[1], step=snap.figures_step)
        if snap.ablation is not None:
            self.show_ablation(snap.ablation)
        self._show_stability(NO_STABILITY.format(name=snap.name) if snap.stability is None
                             else f"{summary(snap.stability)} (step {snap.stability['step']})")

    def _show_stability(self, text: str) -> None:
        """The line of `clusterlab stability`'s ARIs, repainted only when it changes."""
        if text != self._stability:
            self._stability = text
            self.query_one("#stability-line", Static).update(text)

    def clear(self) -> None:
        self.query_one(BlockView).show(None)
        self._show_title(NO_CLUSTERS)
        if self.ablation is not None:
            self.ablation = None
            self.query_one("#ablation-table", Static).update(NO_ABLATION)
        self._show_stability("")

    def _show_title(self, title: str) -> None:
        """The title line; its step moves with every save while training: one row, cut short if need be, so an
        update never lays the screen out again (and a hidden or small tab's is never left stale)."""
        if title != self._title:
            self._title = title
            self.query_one("#modules-title", Static).update(Text(title, no_wrap=True, overflow="ellipsis"),
                                                             layout=False)

    def on_resize(self) -> None:
        if self.ablation is not None:
            self._draw_ablation()  # the class columns widen or narrow with the pane

    def _draw_ablation(self) -> None:
        width = self.query_one("#ablation-table", Static).content_region.width or self.size.width
        self.query_one("#ablation-table", Static).update(ablation_text(self.ablation, width))


def picture_strips(picture: BlockPicture, width: int = 0, pixel_rows: int = 0) -> list[Strip]:
    """The picture as terminal lines: matrix rows paired into half blocks, boundaries as extra rows/columns.
    A picture smaller than width x pixel_rows has its cells repeated a whole number of times to fill it."""
    n_rows, n_cols = picture.size
    boundaries = picture.k - 1
    rows = _layout(picture.row_bounds, max(1, (pixel_rows - boundaries) // max(1, n_rows)))
    cols = _layout(picture.col_bounds, max(1, (width - boundaries) // max(1, n_cols)))
    # colour indices: 0..LEVELS-1 on the ramp, LEVELS a boundary, None no cell (an odd last row's lower half)
    grid = [[LEVELS if r < 0 or c < 0 else round(picture.values[r][c] * (LEVELS - 1)) for c in cols] for r in rows]
    if len(grid) % 2:
        grid.append([None] * len(cols))
    styles: dict[tuple, Style] = {}
    strips = []
    for top, bottom in zip(grid[0::2], grid[1::2], strict=True):
        segments = []
        for pair in zip(top, bottom, strict=True):
            if pair not in styles:
                styles[pair] = Style(color=_PALETTE[pair[0]], bgcolor=None if pair[1] is None else _PALETTE[pair[1]])
            segments.append(Segment(HALF_BLOCK, styles[pair]))
        strips.append(Strip(segments).simplify())
    return strips


def ramp(value: float) -> tuple[int, int, int]:
    """The colour of a value in [0, 1], linear between the ramp's stops."""
    for (x0, c0), (x1, c1) in zip(RAMP, RAMP[1:], strict=False):
        if value <= x1:
            t = (value - x0) / (x1 - x0)
            return tuple(round(a + (b - a) * t) for a, b in zip(c0, c1, strict=True))  # type: ignore[return-value]
    return RAMP[-1][1]


LEVELS = 64  # colour steps: more are invisible in a terminal and only make more distinct styles
_PALETTE = [Color.from_rgb(*ramp(i / (LEVELS - 1))) for i in range(LEVELS)] + [Color.from_rgb(*BOUNDARY)]


def _layout(bounds: tuple[int, ...], repeat: int) -> list[int]:
    """Picture indices in screen order, each `repeat` times, with -1 (a boundary line) between consecutive
    non-empty clusters."""
    out: list[int] = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end > start:
            out.extend(([-1] if out else []) + [i for i in range(start, end) for _ in range(repeat)])
    return out


def ablation_text(ablation: dict, width: int) -> Text:
    """The ablation as coloured text: a baseline row, then per cluster its drop per class (accuracy points,
    white on red for a loss, on blue for a gain), its specialisation U and its p against random unit sets.

    A class column is 4-5 cells (a space and up to "-100"); when U and p do not fit beside 4-cell columns (10
    classes in 50 cells, the tab at 80x24), they go on a line of their own below the table."""
    classes, drops = ablation["classes"], ablation["drop"]
    n = max(1, len(classes))
    inline = (width - LABEL_WIDTH - SPEC_WIDTH - P_WIDTH) // n >= 4
    cell = max(4, min(5, (width - LABEL_WIDTH - (SPEC_WIDTH + P_WIDTH if inline else 0)) // n))
    null = ablation.get("null") or {}
    where = f" at step {ablation['step']:,}" if ablation.get("step") is not None else ""
    text = Text(f"accuracy drop (points){where}; p vs {null.get('samples', 0)} random sets\n", style="dim",
                no_wrap=True, overflow="crop")  # a table: rows cut at a narrow width, never wrapped into others
    text.append(f"{'':<{LABEL_WIDTH}}" + "".join(f"{c:>{cell}}" for c in classes)
                + (f"{'U':>{SPEC_WIDTH}}{'p':>{P_WIDTH}}" if inline else "") + "\n", style="bold")
    text.append(f"{'base':<{LABEL_WIDTH}}" + "".join(f"{round(100 * a):>{cell}}" for a in ablation["baseline"]),
                style="dim")
    for i, (row, spec, p) in enumerate(zip(drops, ablation["specialisation"], ablation["p_value"], strict=True)):
        text.append(f"\n{i + 1:<{LABEL_WIDTH}}", style="bold")
        for d in row:
            text.append(f"{round(100 * d):>{cell}}", style=_drop_style(d))
        if inline:
            text.append(f"{spec:>{SPEC_WIDTH}.2f}")
            text.append_text(_p_text(p, P_WIDTH))
    if not inline:
        text.append("\nU (p):", style="bold")
        used = len("U (p):")
        for i, (spec, p) in enumerate(zip(ablation["specialisation"], ablation["p_value"], strict=True)):
            entry = Text(f"  {i + 1}: {spec:.2f} (").append_text(_p_text(p, 0)).append(")")
            if used + len(entry) > width:  # wrap between clusters, never inside one's entry
                text.append("\n      ")
                used = len("U (p):")
            text.append_text(entry)
            used += len(entry)
    return text


def _p_text(p: float | None, width: int) -> Text:
    """p right-aligned in `width` cells, green when below 0.05."""
    return Text(f"{'-' if p is None else f'{p:.3f}':>{width}}", style="bold green" if p is not None and p < 0.05
                else "")


def _drop_style(drop: float) -> Style:
    """White on a background from dark grey (no change) to red (the class is lost) or blue (it gains)."""
    strength = min(1.0, abs(drop))
    target = (200, 40, 40) if drop > 0 else (40, 80, 200)
    base = (48, 48, 48)
    rgb = tuple(round(b + (t - b) * strength) for b, t in zip(base, target, strict=True))
    return Style(color="white", bgcolor=Color.from_rgb(*rgb))
