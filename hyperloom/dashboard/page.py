"""The dashboard's page: HTML tables filled by dashboard.js, and two Bokeh plots.

The plots are built once here (empty, their data sources named) and embedded
with ``bokeh.embed.components``; BokehJS comes from the installed bokeh wheel
and is served by the dashboard itself (no CDN). The page's script polls
``data.json`` and replaces the sources' data and the tables' rows.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .model import HISTORY_SECONDS, STATES, STREAM_SECONDS

STATIC_DIR = Path(__file__).parent / "static"
STATE_COLORS = {"waiting": "#9e9e9e", "ready": "#ff7f0e", "running": "#1f77b4",
                "finished": "#2ca02c", "failed": "#d62728"}
POLL_MS = 500


def static_files() -> dict[str, Path]:
    """URL path -> file: the page's own script and style, and BokehJS from the wheel."""
    from bokeh.util.paths import bokehjs_path
    files = {f"/static/{p.name}": p for p in STATIC_DIR.iterdir() if p.is_file()}
    files["/static/js/bokeh.min.js"] = Path(bokehjs_path()) / "js" / "bokeh.min.js"
    return files


def _plots():
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool, Range1d
    from bokeh.plotting import figure

    history = ColumnDataSource(name="history", data={"t": [], **{s: [] for s in STATES}})
    states = figure(title="Tasks by state", height=230, sizing_mode="stretch_width",
                    tools="pan,xwheel_zoom,reset,save", x_axis_label="seconds ago")
    for state in STATES:
        states.line("t", state, source=history, color=STATE_COLORS[state], line_width=2,
                    legend_label=state)
    states.legend.location = "top_left"
    states.legend.orientation = "horizontal"

    stream = figure(title=f"Task stream (last {STREAM_SECONDS:.0f} s; one lane per worker core; "
                          f"black lines: transfers, red x: failures)",
                    height=360, sizing_mode="stretch_width", tools="xpan,xwheel_zoom,reset,save",
                    x_range=Range1d(-STREAM_SECONDS, 0.5), x_axis_label="seconds ago",
                    y_range=FactorRange(name="lanes"))
    bars = ColumnDataSource(name="stream", data={k: [] for k in (
        "left", "right", "lane", "color", "group", "worker", "client", "id", "ok")})
    glyph = stream.hbar(y="lane", left="left", right="right", height=0.8, fill_color="color",
                        line_color="white", line_width=0.5, source=bars)
    stream.add_tools(HoverTool(renderers=[glyph], tooltips=[
        ("group", "@group"), ("worker", "@worker"), ("client", "@client"), ("task", "@id"),
        ("ok", "@ok")]))
    transfers = ColumnDataSource(name="transfers", data={"x": [], "y0": [], "y1": []})
    stream.segment(x0="x", y0="y0", x1="x", y1="y1", source=transfers, color="black",
                   alpha=0.25, line_width=1)
    failed = ColumnDataSource(name="stream_failed", data={"x": [], "lane": []})
    stream.scatter("x", "lane", source=failed, marker="x", size=12, color="red", line_width=3)
    return column(states, stream, sizing_mode="stretch_width")


def render_page(broker: str, token: str | None, slurm: bool) -> str:
    from bokeh.embed import components

    script, div = components(_plots())
    config = json.dumps({"token": token, "interval": POLL_MS,
                         "history_seconds": HISTORY_SECONDS})
    template = (STATIC_DIR / "page.html").read_text(encoding="utf-8")
    return (template.replace("$BROKER", html.escape(broker))
            .replace("$SLURM_HIDDEN", "" if slurm else "hidden")
            .replace("$PLOTS", div)
            .replace("$BOKEH_SCRIPT", script)
            .replace("$CONFIG", config.replace("<", "\\u003c")))


def token_form(wrong: bool) -> str:
    """What a browser gets without the right token: a form asking for it."""
    problem = "<p class='bad'>That token is not right.</p>" if wrong else ""
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>hyperloom dashboard"
            "</title></head><body><h1>hyperloom dashboard</h1>" + problem +
            "<form method='get' action='/'><label>Token (printed by loom-dashboard at start): "
            "<input name='token' type='password' autofocus></label> "
            "<button>Open</button></form></body></html>")
