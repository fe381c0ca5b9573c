"""The report in a real headless Chromium: it renders every task bar, paints, and raises no errors.

Skipped when no Chromium/Chrome binary is on PATH (Debian: ``apt-get install chromium``).
"""

import html
import json
import os
import re
import shutil
import subprocess

import pytest

from hyperloom.report import stats, write_report
from hyperloom.report.demo import write_demo_trace
from hyperloom.report.figures import group_colors
from hyperloom.trace import read_trace

pytestmark = pytest.mark.timeout(180)

CHECK_RE = re.compile(r'<pre id="hyperloom-render-check" data-status="(\w+)"[^>]*>(.*?)</pre>',
                      re.S)


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium binary on PATH")


def run_chromium(html_path, tmp_path, *mode, budget_ms=10000):
    """Chromium with everything that could reach the network or wait on a desktop turned off.

    ``html_path`` is a file, or an http:// URL (the live dashboard's tests)."""
    target = str(html_path)
    target = target if target.startswith("http://") else f"file://{target}"
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    # --disable-dev-shm-usage: containers often give /dev/shm 64 MiB, too little for big pages.
    command = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--virtual-time-budget={budget_ms}", *mode, target]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150,
                          cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def render_check(html_path, tmp_path) -> dict:
    """What the page's own script recorded after Bokeh rendered (or gave up)."""
    ((status, text),) = CHECK_RE.findall(run_chromium(html_path, tmp_path, "--dump-dom"))
    if status == "pending":  # the check never ran to the end: nothing else to read
        return {"status": status}
    return json.loads(html.unescape(text))


@pytest.fixture
def report(tmp_path):
    trace_dir = tmp_path / "trace"
    write_demo_trace(str(trace_dir), n_workers=2, cpus=4, n_tasks=50, seed=1, failed=(9,))
    out = tmp_path / "report.html"
    write_report(str(trace_dir), str(out))
    return trace_dir, out


def test_timeline_renders_one_glyph_per_task_without_errors(report, tmp_path):
    _, out = report
    check = render_check(out, tmp_path)
    assert check["status"] == "rendered"
    assert check["errors"] == []
    assert check["task_glyphs"] == check["source_rows"] == 50
    assert check["canvas_count"] > 0


def test_script_errors_on_the_page_are_reported(report, tmp_path):
    # The check must be able to fail: the same page with a throwing script says so.
    _, out = report
    broken = tmp_path / "broken.html"
    # Only the page's own </body>: BokehJS's source holds the same text inside its strings.
    head, body_end, tail = out.read_text(encoding="utf-8").rpartition("</body>")
    broken.write_text(head + "<script>throw new Error('boom')</script>" + body_end + tail,
                      encoding="utf-8")
    check = render_check(broken, tmp_path)
    assert check["status"] == "rendered"
    assert any("boom" in error for error in check["errors"])


def test_screenshot_shows_the_task_bars_in_their_group_colours(report, tmp_path):
    from PIL import Image  # a Bokeh dependency

    trace_dir, out = report
    shot = tmp_path / "shot.png"
    run_chromium(out, tmp_path, f"--screenshot={shot}", "--window-size=1400,1000")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1000)
    colors = group_colors(stats.groups(read_trace(trace_dir)))
    pixels = image.getcolors(maxcolors=1400 * 1000)
    counts = {"#%02x%02x%02x" % rgb: n for n, rgb in pixels}
    # Compute tasks fill most of the timeline; each Aggregate task is a couple of cores wide.
    assert counts.get(colors["Compute"], 0) > 20_000
    assert counts.get(colors["Aggregate"], 0) > 1_000
