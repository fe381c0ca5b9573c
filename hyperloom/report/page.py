"""Assembles the single self-contained HTML page: Bokeh (inlined), tables, summary JSON, self-check.

The page embeds ``<script type="application/json" id="hyperloom-summary">`` with the report's
counts, and a small script that, once Bokeh has rendered, writes into
``<pre id="hyperloom-render-check">`` how many task glyphs the timeline's view holds and any script
errors seen, so a headless browser's dumped DOM tells whether the page really rendered.
"""

from __future__ import annotations

import html
import json

from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import InlineStyleSheet
# From the defining modules: bokeh.models' stub does not export the names.
from bokeh.models.ui.ui_element import UIElement
from bokeh.models.widgets.markups import Div
from bokeh.resources import INLINE

from hyperloom.report import figures, stats
from hyperloom.trace import Trace

SUMMARY_ID = "hyperloom-summary"
RENDER_CHECK_ID = "hyperloom-render-check"

# Installed before Bokeh's own scripts so errors raised while they load are caught too.
_ERROR_CATCHER = """<script>
window.hyperloomErrors = [];
window.addEventListener("error", function (e) { window.hyperloomErrors.push(String(e.message)); });
window.addEventListener("unhandledrejection", function (e) {
  window.hyperloomErrors.push("unhandled rejection: " + String(e.reason));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.hyperloomErrors.push(Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
</script>"""

_RENDER_CHECK = """<pre id="%(check_id)s" data-status="pending" hidden></pre>
<script>
(function () {
  var tries = 0;
  function report(status, extra) {
    var out = document.getElementById("%(check_id)s");
    var result = Object.assign({status: status, errors: window.hyperloomErrors}, extra);
    out.setAttribute("data-status", status);
    out.textContent = JSON.stringify(result);
  }
  function check() {
    tries += 1;
    try {
      var B = window.Bokeh;
      var doc = B && B.documents && B.documents[0];
      var renderer = doc && doc.get_model_by_name("%(renderer)s");
      var view = renderer && B.index.find_one(renderer);
      if (view && view.has_finished() && doc.is_idle) {
        report("rendered", {
          task_glyphs: view.glyph.data_size,
          source_rows: renderer.data_source.get_length(),
          canvas_count: countCanvases(document)
        });
        return;
      }
    } catch (err) {
      window.hyperloomErrors.push("render check: " + String(err));
    }
    if (tries < 300) { setTimeout(check, 100); } else { report("timeout", {}); }
  }
  // Bokeh draws into canvases inside shadow roots; count them to prove something was painted.
  function countCanvases(root) {
    var n = root.querySelectorAll("canvas").length;
    root.querySelectorAll("*").forEach(function (el) {
      if (el.shadowRoot) { n += countCanvases(el.shadowRoot); }
    });
    return n;
  }
  setTimeout(check, 100);
})();
</script>"""

_PAGE_STYLE = "<style>body { font-family: sans-serif; margin: 0 16px; }</style>"
# Bokeh renders each Div inside a shadow root, which page-level CSS does not reach.
_DIV_STYLE = """
table.hl { border-collapse: collapse; margin: 4px 0 16px 0; font-size: 13px; }
table.hl th, table.hl td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
table.hl th { background: #f0f0f0; }
table.hl td.name { text-align: left; }
span.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px;
              vertical-align: middle; border: 1px solid #555; }
"""

_TEMPLATE = """
{% block preamble %}{{ hyperloom_head }}{% endblock %}
{% block contents %}{{ super() }}{{ hyperloom_tail }}{% endblock %}
"""


def build_html(trace: Trace, title: str, summary: dict | None = None) -> str:
    """The complete report page (pass ``stats.summary(trace)`` if it is already computed)."""
    summary = stats.summary(trace) if summary is None else summary
    colors = figures.group_colors(stats.groups(trace))
    timeline = figures.timeline(trace, colors)
    usage: list[UIElement]
    if trace.samples:
        usage = list(figures.usage(trace, timeline.x_range, figures.worker_colors(trace)))
    else:
        usage = [_div("<p>No CPU or memory samples were recorded.</p>")]
    parts: list[UIElement] = [_div(_header(summary, title)), timeline, *usage,
             _div(_section("Tasks by label group", _duration_table(
                 stats.duration_table(trace, lambda t: t.group), colors))),
             _div(_section("Tasks by task type", _duration_table(
                 stats.duration_table(trace, stats.task_type_key), None))),
             _div(_section("Data transferred between workers", _transfer_table(trace)))]
    if trace.transfers:
        parts.append(figures.transfers_over_time(trace, timeline.x_range))
    layout = column(*parts, sizing_mode="stretch_width")
    tail = _RENDER_CHECK % {"check_id": RENDER_CHECK_ID, "renderer": figures.TIMELINE_RENDERER}
    return file_html(layout, INLINE, title, template=_TEMPLATE, template_variables={
        "hyperloom_head": _ERROR_CATCHER + _PAGE_STYLE,
        "hyperloom_tail": summary_script(summary) + tail})


def _div(text: str) -> Div:
    return Div(text=text, stylesheets=[InlineStyleSheet(css=_DIV_STYLE)])


def summary_script(summary: dict) -> str:
    # A "<" inside a script element can end it early ("</script") or change how the HTML parser
    # reads the rest ("<!--", "<script"); as \u003c it means the same to JSON and nothing to HTML.
    payload = json.dumps(summary, sort_keys=True).replace("<", "\\u003c")
    return f'<script type="application/json" id="{SUMMARY_ID}">{payload}</script>'


def _header(facts: dict, title: str) -> str:
    line = (f"{facts['n_tasks']} task executions ({facts['n_failed']} failed, "
            f"{facts['n_unfinished']} unfinished) of {facts['n_submitted']} submitted, "
            f"{facts['n_workers']} workers, {facts['duration']:.3f} s, "
            f"{facts['n_transfers']} transfers ({stats.human_bytes(facts['bytes_transferred'])})")
    if facts["bad_records"]:
        line += f"; {facts['bad_records']} unreadable trace records skipped"
    return f"<h2>{html.escape(title)}</h2><p>{html.escape(line)}</p>"


def _section(heading: str, body: str) -> str:
    return f"<h3>{html.escape(heading)}</h3>{body}"


def _duration_table(rows: list[stats.DurationRow], colors: dict[str, str] | None) -> str:
    if not rows:
        return "<p>No tasks were executed.</p>"
    lines = ["<table class='hl'><tr><th>name</th><th>tasks</th><th>failed</th>"
             "<th>total [s]</th><th>mean [s]</th><th>longest [s]</th></tr>"]
    for row in rows:
        swatch = (f"<span class='swatch' style='background:{colors[row.name]}'></span>"
                  if colors else "")
        lines.append(f"<tr><td class='name'>{swatch}{html.escape(row.name)}</td>"
                     f"<td>{row.count}</td><td>{row.failed}</td><td>{row.total:.6f}</td>"
                     f"<td>{row.mean:.6f}</td><td>{row.longest:.6f}</td></tr>")
    return "".join(lines) + "</table>"


def _transfer_table(trace: Trace) -> str:
    rows = stats.transfer_table(trace.transfers)
    if not rows:
        return "<p>No data transfers were recorded.</p>"
    lines = ["<table class='hl'><tr><th>source</th><th>target</th><th>transfers</th>"
             "<th>bytes</th><th></th></tr>"]
    for row in rows:
        lines.append(f"<tr><td class='name'>{html.escape(row.source)}</td>"
                     f"<td class='name'>{html.escape(row.target)}</td><td>{row.count}</td>"
                     f"<td>{row.nbytes}</td><td>{stats.human_bytes(row.nbytes)}</td></tr>")
    return "".join(lines) + "</table>"
