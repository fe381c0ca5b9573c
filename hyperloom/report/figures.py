"""The report's Bokeh figures: task timeline, CPU and memory per worker, transfers over time.

The timeline's renderer is named ``timeline`` and its data source holds exactly one row per task
execution, so the page (and the browser test) can count rendered task glyphs.  Two helper
renderers may sit beside it: ``timeline-more`` (further blocks of tasks on non-adjacent cores)
and ``timeline-failed`` (a hatched outline over failed and unfinished tasks).
"""

from __future__ import annotations

from itertools import cycle

import numpy as np

from bokeh.models import ColumnDataSource, FixedTicker, HoverTool, NumeralTickFormatter, Range1d
# From the defining modules: bokeh.models' stub does not export these names.
from bokeh.models.annotations.geometry import BoxAnnotation
from bokeh.models.annotations.legends import Legend, LegendItem
from bokeh.models.renderers import DataRenderer
from bokeh.palettes import Category10_10, Category20_20
from bokeh.plotting import figure
from bokeh.transform import factor_cmap

from hyperloom.report import stats
from hyperloom.trace import Trace

TIMELINE_RENDERER = "timeline"
# Columns of the timeline's sources, in the order _task_rows builds each row.
_COLUMNS = ("left", "right", "bottom", "top", "duration", "task_id", "worker", "task_type",
            "label", "group", "cpus", "status")
_FLOAT_COLUMNS = ("left", "right", "bottom", "top", "duration")
_INT_COLUMNS = ("task_id", "worker")
_LANE_PX = 18
_TIMELINE_MAX_PX = 1600
_TOOLS = "xpan,xwheel_zoom,box_zoom,reset,save"


# Category20 lists each hue dark then light; the dark ten first keeps the first groups far apart.
_GROUP_PALETTE = Category20_20[0::2] + Category20_20[1::2]


def group_colors(groups: list[str]) -> dict[str, str]:
    """A colour per group; past 20 groups colours repeat (more are not told apart by eye anyway)."""
    return dict(zip(groups, cycle(_GROUP_PALETTE)))


def worker_colors(trace: Trace) -> dict[object, str]:
    ids = [w.worker_id for w in trace.workers] + [None]  # None: the broker's own samples
    return dict(zip(ids, cycle(Category10_10)))


def timeline(trace: Trace, colors: dict[str, str]) -> figure:
    """One lane per worker core plus a light-task lane; one glyph per task execution."""
    lanes = stats.lanes(trace)
    height = min(_TIMELINE_MAX_PX, max(260, _LANE_PX * len(lanes) + 110))
    plot = figure(title="Task timeline (one lane per worker core, plus light tasks)",
                  height=height, sizing_mode="stretch_width", tools=_TOOLS,
                  x_axis_label="time [s]", x_range=Range1d(start=0, end=max(trace.duration, 1e-3)),
                  y_range=Range1d(start=len(lanes) - 0.5, end=-0.5))  # first worker on top
    plot.yaxis.ticker = FixedTicker(ticks=list(range(len(lanes))))
    plot.yaxis.major_label_overrides = {i: lane.name for i, lane in enumerate(lanes)}
    plot.ygrid.grid_line_color = None
    _shade_workers(plot, lanes)
    _draw_tasks(plot, trace, {lane: i for i, lane in enumerate(lanes)}, colors)
    return plot


def _draw_tasks(plot: figure, trace: Trace, index: dict, colors: dict[str, str]) -> None:
    # Quads, not polygons, and no per-row hatching: BokehJS draws 100,000 plain quads in seconds
    # but takes minutes for as many polygons or hatched quads.  A task on non-adjacent cores
    # gets its first block of adjacent cores in the "timeline" renderer (one glyph per task) and
    # each further block in a second one, rather than one block over cores it does not hold.
    main, more = _task_rows(trace, index)
    # Colours map from the group column in the browser: a per-row colour column would grow
    # the page and its serialisation time on big traces.
    fill = factor_cmap("group", list(colors.values()), list(colors))
    timeline_renderer = plot.quad(source=_source(main), left="left", right="right",
                                  bottom="bottom", top="top", fill_color=fill,
                                  line_color="black", name=TIMELINE_RENDERER)
    renderers: list[DataRenderer] = [timeline_renderer]
    if more:
        renderers.append(plot.quad(source=_source(more), left="left", right="right",
                                   bottom="bottom", top="top", fill_color=fill,
                                   line_color="black", name=TIMELINE_RENDERER + "-more"))
    failed = [row for row in main + more if row[-1] != "ok"]  # few: a failure ends a run
    if failed:
        plot.quad(source=_source(failed), left="left", right="right", bottom="bottom",
                  top="top", fill_alpha=0, line_color="red", line_width=2, hatch_pattern="x",
                  hatch_color="black", hatch_alpha=0.6, name=TIMELINE_RENDERER + "-failed")
    # Legend items built here, one per group pointing at a row of that group: legend_field
    # would make the browser group every row of the source again.
    first_row: dict[str, int] = {}  # group -> index of its first row
    for i, row in enumerate(main):
        first_row.setdefault(row[_COLUMNS.index("group")], i)
    # bokeh's stub makes GlyphRenderer invariant in its glyph type, so a quad renderer is not
    # the GlyphRenderer[Glyph] LegendItem's stub asks for; any glyph renderer is fine there.
    plot.add_layout(Legend(title="label group", click_policy="none", items=[
        LegendItem(label=group, renderers=[timeline_renderer],  # type: ignore[list-item]
                   index=i)
        for group, i in first_row.items()]), "right")
    plot.add_tools(HoverTool(renderers=renderers, tooltips=[
        ("task", "@task_id (@task_type)"), ("label", "@label"), ("worker", "@worker cpus @cpus"),
        ("start", "@left{0.000} s"), ("duration", "@duration{0.000000} s"), ("status", "@status")]))


def _task_rows(trace: Trace, index) -> tuple[list[tuple], list[tuple]]:
    """Rows of the one-block-per-task source, and of the further blocks of split tasks."""
    main: list[tuple] = []
    more: list[tuple] = []
    for task in trace.tasks:
        end = stats.task_end(task, trace)
        status = "ok" if task.ok else ("unfinished" if task.end is None else "failed")
        for n, (first, last) in enumerate(stats.task_spans(task, index)):
            (more if n else main).append((
                task.start, end, first - 0.4, last + 0.4, end - task.start, task.task_id,
                task.worker, task.task_type or "", task.label or "", task.group,
                ",".join(map(str, task.cpu_ids)), status))
    return main, more


def _source(rows: list[tuple]) -> ColumnDataSource:
    columns: dict[str, list | np.ndarray] = {
        name: [row[i] for row in rows] for i, name in enumerate(_COLUMNS)}
    # Numeric columns as arrays travel in the page as compact binary, not as JSON numbers.
    for names, dtype in ((_FLOAT_COLUMNS, float), (_INT_COLUMNS, int)):
        for name in names:
            columns[name] = np.asarray(columns[name], dtype=dtype)
    return ColumnDataSource(columns)


def _shade_workers(plot: figure, lanes: list[stats.Lane]) -> None:
    # Alternate background bands tell where one worker's lanes end and the next one's begin.
    workers = list(dict.fromkeys(lane.worker for lane in lanes))
    for n, worker in enumerate(workers):
        rows = [i for i, lane in enumerate(lanes) if lane.worker == worker]
        plot.add_layout(BoxAnnotation(bottom=rows[0] - 0.5, top=rows[-1] + 0.5,
                                      fill_color="#888888", fill_alpha=0.10 if n % 2 else 0.0,
                                      level="underlay"))


def usage(trace: Trace, x_range, colors: dict[object, str]) -> tuple[figure, figure]:
    """CPU (%) and memory (MiB) per worker over time, sharing the timeline's time axis."""
    cpu = figure(title="CPU usage per process", height=230, sizing_mode="stretch_width",
                 tools=_TOOLS, x_range=x_range, x_axis_label="time [s]", y_axis_label="CPU %")
    mem = figure(title="Memory per process", height=230, sizing_mode="stretch_width",
                 tools=_TOOLS, x_range=x_range, x_axis_label="time [s]", y_axis_label="MiB")
    by_worker: dict[object, list] = {}
    for sample in trace.samples:
        by_worker.setdefault(sample.worker, []).append(sample)
    for worker in sorted(by_worker, key=lambda w: (w is None, w or 0)):  # the broker last
        samples = by_worker[worker]
        name = "broker" if worker is None else f"worker-{worker}"
        times = [s.time for s in samples]
        cpu.line(times, [s.cpu_percent for s in samples], color=colors[worker], legend_label=name)
        mem.line(times, [s.mem_bytes / 2**20 for s in samples], color=colors[worker],
                 legend_label=name)
    for plot in (cpu, mem):
        if plot.legend:
            plot.legend.location = "top_left"
    return cpu, mem


def transfers_over_time(trace: Trace, x_range) -> figure:
    """Cumulative bytes moved per source → target pair (busiest pairs; the rest as "other")."""
    plot = figure(title="Data transferred over time (cumulative)", height=260,
                  sizing_mode="stretch_width", tools=_TOOLS, x_range=x_range,
                  x_axis_label="time [s]", y_axis_label="bytes")
    plot.yaxis.formatter = NumeralTickFormatter(format="0.0 b")
    series = stats.cumulative_transfers(trace.transfers)
    for (name, (times, totals)), color in zip(series.items(), cycle(Category10_10)):
        # Held flat to the end of the run, so every pair's final total reads at the right edge.
        plot.step(times + [trace.duration], totals + [totals[-1]], mode="after", color=color,
                  legend_label=name, line_width=2)
    if plot.legend:
        plot.legend.location = "top_left"
    return plot
