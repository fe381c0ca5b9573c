"""The report's Bokeh figures: task timeline, CPU and memory per worker, transfers over time.

The timeline's renderer is named ``timeline`` and its data source holds exactly one row per task
execution, so the page (and the browser test) can count rendered task glyphs.
"""

from __future__ import annotations

from itertools import cycle

import numpy as np

from bokeh.models import (BoxAnnotation, ColumnDataSource, FixedTicker, HoverTool, Legend,
                          NumeralTickFormatter, Range1d)
from bokeh.palettes import Category10_10, Category20_20
from bokeh.plotting import figure
from bokeh.transform import factor_cmap, factor_hatch

from hyperloom.report import stats
from hyperloom.trace import Trace

TIMELINE_RENDERER = "timeline"
_STATUSES = ["ok", "failed", "unfinished"]
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
    index = {lane: i for i, lane in enumerate(lanes)}
    height = min(_TIMELINE_MAX_PX, max(260, _LANE_PX * len(lanes) + 110))
    plot = figure(title="Task timeline (one lane per worker core, plus light tasks)",
                  height=height, sizing_mode="stretch_width", tools=_TOOLS,
                  x_axis_label="time [s]", x_range=Range1d(0, max(trace.duration, 1e-3)),
                  y_range=Range1d(len(lanes) - 0.5, -0.5))  # first worker on top
    plot.yaxis.ticker = FixedTicker(ticks=list(range(len(lanes))))
    plot.yaxis.major_label_overrides = {i: lane.name for i, lane in enumerate(lanes)}
    plot.ygrid.grid_line_color = None
    _shade_workers(plot, lanes)
    # A legend placed beside the plot before the glyph exists is the one legend_field fills.
    plot.add_layout(Legend(title="label group", click_policy="none"), "right")
    main, more = _task_columns(trace, index)
    # Colours and hatches map from the group and status columns in the browser: per-row
    # colour columns would triple the page's size and serialisation time on big traces.
    style = dict(fill_color=factor_cmap("group", list(colors.values()), list(colors)),
                 line_color=factor_cmap("status", ["black", "red", "red"], _STATUSES),
                 hatch_pattern=factor_hatch("status", [" ", "x", "x"], _STATUSES),
                 hatch_color="black", hatch_alpha=0.5)
    # Quads, not polygons: BokehJS draws 100,000 quads in seconds, polygons in minutes.  A task
    # on non-adjacent cores gets its first block of adjacent cores here (one glyph per task)
    # and each further block in a second renderer, not one block over cores it does not hold.
    renderers = [plot.quad(source=ColumnDataSource(main), left="left", right="right",
                           bottom="bottom", top="top", legend_field="group",
                           name=TIMELINE_RENDERER, **style)]
    if more["left"].size:
        renderers.append(plot.quad(source=ColumnDataSource(more), left="left", right="right",
                                   bottom="bottom", top="top", name=TIMELINE_RENDERER + "-more",
                                   **style))
    plot.add_tools(HoverTool(renderers=renderers, tooltips=[
        ("task", "@task_id (@task_type)"), ("label", "@label"), ("worker", "@worker cpus @cpus"),
        ("start", "@left{0.000} s"), ("duration", "@duration{0.000000} s"), ("status", "@status")]))
    return plot


def _task_columns(trace: Trace, index) -> tuple[dict, dict]:
    """Columns of the one-block-per-task source, and of the further blocks of split tasks."""
    names = ("left", "right", "bottom", "top", "duration", "task_id", "worker", "task_type",
             "label", "group", "cpus", "status")
    main: dict[str, list] = {name: [] for name in names}
    more: dict[str, list] = {name: [] for name in names}
    for task in trace.tasks:
        end = stats.task_end(task, trace)
        status = "ok" if task.ok else ("unfinished" if task.end is None else "failed")
        for n, (first, last) in enumerate(stats.task_spans(task, index)):
            values = (task.start, end, first - 0.4, last + 0.4, end - task.start, task.task_id,
                      task.worker, task.task_type or "", task.label or "", task.group,
                      ",".join(map(str, task.cpu_ids)), status)
            for name, value in zip(names, values):
                (more if n else main)[name].append(value)
    # Numeric columns as arrays travel in the page as compact binary, not as JSON numbers.
    for columns in (main, more):
        for name in names[:7]:
            columns[name] = np.asarray(columns[name])
    return main, more


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
    cpu = figure(title="CPU usage per worker", height=230, sizing_mode="stretch_width",
                 tools=_TOOLS, x_range=x_range, x_axis_label="time [s]", y_axis_label="CPU %")
    mem = figure(title="Memory per worker", height=230, sizing_mode="stretch_width",
                 tools=_TOOLS, x_range=x_range, x_axis_label="time [s]", y_axis_label="MiB")
    by_worker: dict[object, list] = {}
    for sample in trace.samples:
        by_worker.setdefault(sample.worker, []).append(sample)
    for worker, samples in by_worker.items():
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
