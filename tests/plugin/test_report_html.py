"""The HTML report opened in headless Chromium (Debian's ``chromium``): the plots render, the
page logs no console errors, and a screenshot is kept (under the run's --gpuinfer-report
directory, else .gpuinfer/report-check/) for people and CI artifacts."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_report import SIM, SUITE_TESTS

from pytest_gpuinfer.plugin.options import Settings
from pytest_gpuinfer.report.cli import main as report_main

pytest.importorskip("plotly", reason="plotly is not installed (extra report): no HTML report")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (scripts/setup.d/50-report.sh installs it)",
)
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--virtual-time-budget=15000",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: the page must be self-contained
    "--disable-extensions",
)
_CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\] \"(?P<message>.*)\", source: (?P<source>\S+)")


@dataclass
class Rendered:
    """What Chromium made of a page: its DOM after scripts ran, and its console messages."""

    dom: str
    console: list[str]

    def count(self, css_class: str) -> int:
        """Elements carrying ``css_class`` in the rendered DOM."""
        return len(re.findall(rf'class="(?:[^"]* )?{re.escape(css_class)}(?: [^"]*)?"', self.dom))


def render(page: Path, screenshot: Path | None = None) -> Rendered:
    """Open ``page`` in headless Chromium (no network): the DOM, console lines, a screenshot."""
    assert CHROMIUM is not None
    url = page.resolve().as_uri()
    done = subprocess.run(
        [CHROMIUM, *_FLAGS, "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [m.group("message") for m in _CONSOLE.finditer(done.stderr)]
    if screenshot is not None:
        shot = subprocess.run(
            [CHROMIUM, *_FLAGS, "--window-size=1400,4000", f"--screenshot={screenshot}", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    return Rendered(done.stdout, console)


def artifact_dir(settings: Settings, root: Path) -> Path:
    """Where the page and its screenshot are kept: the run's report dir, else .gpuinfer/."""
    base = Path(settings.report_dir) if settings.report_dir else root / ".gpuinfer"
    out = base / "report-check"
    out.mkdir(parents=True, exist_ok=True)
    return out


@needs_chromium
def test_console_errors_are_seen(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>missingFunction();</script></body></html>")
    assert any("missingFunction is not defined" in line for line in render(page).console)


@needs_chromium
def test_html_report_renders_every_plot_in_chromium(
    pytester: pytest.Pytester,
    tmp_path: Path,
    gpuinfer_settings: Settings,
    pytestconfig: pytest.Config,
) -> None:
    pytester.makepyfile(SUITE_TESTS)
    out = tmp_path / "reports"
    result = pytester.runpytest(*SIM, f"--gpuinfer-report={out}")
    result.assert_outcomes(passed=3, failed=1)
    page = out / "report.html"
    result.stdout.fnmatch_lines([f"html: {page}"])
    head = page.read_text()[:3000]
    assert "<script type='text/javascript'>/**" in head  # plotly.js inline, not fetched
    keep = artifact_dir(gpuinfer_settings, pytestconfig.rootpath)
    shutil.copy(page, keep / "report.html")
    rendered = render(page, screenshot=keep / "report.png")
    assert rendered.console == [], rendered.console
    # 3 latency plots per test with load runs (matrix, burst), the matrix heatmap, the burst
    # timeline, the memory timeline
    assert rendered.count("js-plotly-plot") == 9
    assert rendered.count("main-svg") >= 9
    assert rendered.count("hm") == 1  # the heatmap trace
    assert "configuration matrix: request throughput" in rendered.dom
    assert "queue depth" in rendered.dom and "completed req/s" in rendered.dom
    assert "batch size" in rendered.dom and "5xx" in rendered.dom  # the boundary table
    assert ("environment" in rendered.dom and "AMD" in rendered.dom) or "CPU" in rendered.dom

    baseline = tmp_path / "baseline.json"
    shutil.copy(out / "report.json", baseline)
    compare = tmp_path / "compare.html"
    assert (
        report_main([str(out / "report.json"), "--baseline", str(baseline), "-o", str(compare)])
        == 0
    )
    shutil.copy(compare, keep / "compare.html")
    side_by_side = render(compare, screenshot=keep / "compare.png")
    assert side_by_side.console == [], side_by_side.console
    assert side_by_side.count("js-plotly-plot") == 9
    assert "this run vs baseline" in side_by_side.dom
    assert side_by_side.dom.count("baseline run 1 TTFT") >= 1
