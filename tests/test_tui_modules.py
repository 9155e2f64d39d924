"""Pilot tests of the Modules pane in the app's layout at 80x24 and 120x40: the blocks, their bounds, the table."""

from __future__ import annotations

import numpy as np
import pytest
from rich.color import Color
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from engine.picture import block_picture
from tui.widgets.modules import BOUNDARY, NO_ABLATION, NO_CLUSTERS, BlockView, ModulesPane, ramp

ABLATION = {
    "units": "fc2 output units in R_i set to zero",
    "classes": list(range(10)),
    "baseline": [0.99, 0.98, 0.97, 0.99, 0.96, 0.95, 0.99, 0.97, 0.93, 0.94],
    "drop": [[0.97, 0.96, 0.9, 0.95, 0.91, 0.01, 0.0, -0.02, 0.03, 0.0],
             [0.0, 0.02, 0.01, 0.0, 0.0, 0.93, 0.97, 0.95, 0.9, 0.92]],
    "specialisation": [0.912, 0.887],
    "p_value": [1 / 101, 0.5],
    "null": {"samples": 100, "seed": 0, "sizes": [66, 62], "mean": [0.1, 0.1], "std": [0.05, 0.05],
             "drop_mean": None},
}


class ModulesApp(App):
    """The real app's frame: header, a control pane of the same width rules, the tabs, the footer."""

    CSS = "#left { width: 1fr; min-width: 30; max-width: 44; } #tabs { width: 3fr; }"

    def __init__(self) -> None:
        super().__init__()
        self.wanted = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield Static("control pane", id="left")
            with TabbedContent(id="tabs"):
                with TabPane("Modules 4", id="modules"):
                    yield ModulesPane(id="modules-pane")
                with TabPane("Hidden 5", id="hidden"):
                    yield ModulesPane(id="hidden-pane")
        yield Footer()

    def on_modules_pane_picture_wanted(self, message: ModulesPane.PictureWanted) -> None:
        self.wanted += 1


def planted_layer(seed: int = 0):
    """A 128x128 layer with two shuffled blocks (66x61, 62x67): |W| 1 inside, 0.05 outside."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(np.repeat([0, 1], [66, 62]))
    cols = rng.permutation(np.repeat([0, 1], [61, 67]))
    return np.where(rows[:, None] == cols[None, :], 1.0, -0.05), rows, cols


def screen(app) -> list:
    """The composed screen as strips: what the terminal is sent, one per line."""
    return app.screen._compositor.render_strips(app.size)


def cell(strips, x: int, y: int):
    """(character, style) of one screen cell."""
    line = strips[y]
    return line.crop(x, x + 1).text, next(iter(line.crop(x, x + 1))).style


def rgb(color: Color | None):
    return None if color is None else color.get_truecolor()[:3]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_blocks_bounds_and_ablation_table_render(size):
    app = ModulesApp()
    async with app.run_test(size=size) as pilot:
        pane = app.query_one("#modules-pane", ModulesPane)
        view = pane.query_one(BlockView)
        await pilot.pause()
        assert app.wanted >= 1  # the pane asked for a picture once it had a size
        width, height = view.size
        assert pane.picture_size(2) == (2 * height - 1, width - 1)
        assert width >= 45 and height >= 8  # 80x24: a 45+ x 16+ matrix picture beside a 4-row table

        w, rows, cols = planted_layer()
        picture = block_picture(w, rows, cols, 2, *pane.picture_size(2))
        pane.show_picture(picture, layer="fc2", step=1876)
        pane.show_ablation(ABLATION)
        await pilot.pause()
        strips = screen(app)
        x0, y0 = view.region.x, view.region.y

        # the column after cluster 0's cells and the half row after its rows are boundary lines, top to bottom
        boundary_col, boundary_row = picture.col_bounds[1], picture.row_bounds[1]
        for y in range(view.size.height):
            char, style = cell(strips, x0 + boundary_col, y0 + y)
            assert char == "▀" and rgb(style.color) == BOUNDARY and rgb(style.bgcolor) == BOUNDARY
        for x in range(view.size.width):
            _, style = cell(strips, x0 + x, y0 + boundary_row // 2)
            half = style.bgcolor if boundary_row % 2 else style.color
            assert rgb(half) == BOUNDARY
        # inside a block |W| is at the top of the ramp, outside near its bottom
        _, inside = cell(strips, x0, y0)
        _, outside = cell(strips, x0 + boundary_col + 1, y0)
        assert rgb(inside.color) == ramp(1.0) and rgb(outside.color) == ramp(round(0.05 * 63) / 63)

        text = [line.text for line in strips]
        table_top = pane.query_one("#ablation-table").region.y
        table = text[table_top: table_top + 6]
        assert table[1].split()[:10] == [str(c) for c in range(10)]
        assert table[2].split()[:3] == ["base", "99", "98"]
        assert table[3].split()[:6] == ["1", "97", "96", "90", "95", "91"]
        if size == (80, 24):  # U and p have a line of their own below the drops
            assert table[5].split() == ["U", "(p):", "1:", "0.91", "(0.010)", "2:", "0.89", "(0.500)"]
        else:
            assert table[1].split()[-2:] == ["U", "p"]
            assert table[3].split()[-2:] == ["0.91", "0.010"] and table[4].split()[-2:] == ["0.89", "0.500"]
        assert pane.query_one("#ablation-table").region.bottom <= size[1] - 1  # all on screen above the footer
        # every drop is its own column: a space before each number, however wide
        assert all(len(cell) <= 3 for cell in table[4].split()[1:11])
        # a lost class is white on red
        drop_x = table[3].index(" 97") + 2
        _, lost = cell(strips, drop_x, table_top + 3)
        red, green, blue = rgb(lost.bgcolor)
        assert red > 150 and green < 80 and blue < 80
        assert any("step 1,876: |fc2| 128x128 by cluster (k=2)" in line for line in text)


def test_narrow_table_wraps_u_and_p_between_clusters():
    from tui.widgets.modules import ablation_text

    ablation = {**ABLATION, "drop": ABLATION["drop"] * 2, "specialisation": [0.5] * 4, "p_value": [0.25] * 4}
    lines = ablation_text(ablation, 48).plain.splitlines()
    assert lines[-2:] == ["U (p):  1: 0.50 (0.250)  2: 0.50 (0.250)", "        3: 0.50 (0.250)  4: 0.50 (0.250)"]
    assert all(len(line) <= 48 for line in lines)


async def test_same_picture_is_not_redrawn_clear_and_hidden_tab():
    app = ModulesApp()
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one("#modules-pane", ModulesPane)
        await pilot.pause()
        assert app.query_one("#hidden-pane", ModulesPane).picture_size(2) is None  # not laid out: ask later
        w, rows, cols = planted_layer()
        picture = block_picture(w, rows, cols, 2, *pane.picture_size(2))
        pane.show_picture(picture)
        view = pane.query_one(BlockView)
        lines = view.lines
        pane.show_picture(block_picture(w, rows, cols, 2, *pane.picture_size(2)))  # equal: kept as drawn
        assert view.lines is lines

        pane.clear()
        await pilot.pause()
        assert view.lines == [] and pane.ablation is None
        text = "\n".join(line.text for line in screen(app))
        assert NO_CLUSTERS in text and NO_ABLATION in text  # each on one line at 80x24

        app.query_one(TabbedContent).active = "hidden"
        wanted = app.wanted
        await pilot.pause()
        assert app.wanted > wanted and app.query_one("#hidden-pane", ModulesPane).picture_size(3) is not None


def test_the_widget_and_the_picture_import_no_torch():
    import subprocess
    import sys

    code = "import sys, tui.widgets.modules, engine.picture; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
