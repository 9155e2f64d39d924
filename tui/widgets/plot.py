"""A plotext plot drawn from plotext's character matrix straight into terminal lines, built only when shown."""

from __future__ import annotations

from itertools import groupby
from operator import itemgetter

from plotext._utility import colors_to_ansi
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.strip import Strip
from textual_plotext import PlotextPlot

Colors = tuple  # plotext's (foreground, style, background) of one cell


class MatrixPlot(PlotextPlot):
    """PlotextPlot without the round trip through text: PlotextPlot.render has plotext write the whole canvas as
    ANSI escape codes and rich parse them back, which is most of a chart's cost at 4 redraws a second (time the
    engine's thread loses, as both need the GIL). This widget reads plotext's matrix of characters and colours and
    makes each line's segments directly, each colour triple turned into a style once.

    Call `replot()` after changing `plt`; the lines are built at the next paint, so a hidden plot builds nothing."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._lines: list[Strip] | None = None
        self._styles: dict[Colors, Style] = {}  # plotext colour triple -> style
        self._base: Style | None = None  # the widget's style the cached cell styles were made on
        self._built_size = Size(0, 0)

    def replot(self) -> None:
        """The figure changed: build it again when it is next painted."""
        self._lines = None
        self.refresh()

    def on_resize(self) -> None:
        if self.size != self._built_size:  # a plot first shown has often been built at its new size already
            self.replot()

    def _register_theme(self, app_theme_name: str) -> None:
        super()._register_theme(app_theme_name)
        self._lines = None

    def render_line(self, y: int) -> Strip:
        if self._lines is None:
            self._lines = self._build()
        if y < len(self._lines):
            return self._lines[y]
        return Strip.blank(self.size.width, self.rich_style)

    def _build(self) -> list[Strip]:
        self._built_size = self.size
        width, height = self.size
        if not (width and height):
            return []
        plot = self.plt
        # What PlotextPlot.render sets before plotext's build, then the build without writing the canvas.
        plot.plotsize(width, height)
        plot._set_size(width, height)
        plot.theme(self._get_plotext_theme_name(self.app.theme))
        plot._set_sizes()
        plot._build_matrix()
        matrix = plot.monitor.matrix
        base = self.rich_style
        if self._base != base:  # cell styles sit on the widget's own colours, as rendered text does
            self._base, self._styles = base, {}
        lines = []
        for row in reversed(matrix.Rows):  # plotext's row 0 is the bottom line
            colors = zip(matrix.fullground[row], matrix.style[row], matrix.background[row], strict=True)
            cells = zip(colors, matrix.marker[row], strict=True)
            segments = [Segment("".join(map(itemgetter(1), run)), self._style(key))
                        for key, run in groupby(cells, itemgetter(0))]
            lines.append(Strip(segments).crop_extend(0, width, base))
        return lines

    def _style(self, colors: Colors) -> Style:
        """The rich style of plotext's colour triple, read from the escape codes plotext itself would write for it
        (so colours are exactly those of PlotextPlot)."""
        style = self._styles.get(colors)
        if style is None:
            parsed = Text.from_ansi(colors_to_ansi(*colors) + "x")
            style = Style.combine([self._base or Style(), *(span.style for span in parsed.spans)])  # type: ignore
            self._styles[colors] = style
        return style
