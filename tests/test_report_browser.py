"""Report pages in a real headless Chromium (Debian's, driven by Playwright): they load from
file:// with no network and no console error, every image decodes, the slider shows each
step's grid, the curves hold every logged point, and the screen is not blank."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gankit.report import REPORT, write_comparison

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("GANKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# what a sandboxed, offline machine needs (no background connections to Google's hosts)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does, "
            "as root) or point GANKIT_CHROMIUM at a Chromium binary"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


class Visit:
    """A page opened from disk, with every request it made and every console message."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.requests: list[str] = []
        self.errors: list[str] = []

        def route(route):  # nothing leaves the machine: a request that is not the page fails
            self.requests.append(route.request.url)
            route.continue_() if route.request.url.startswith(("file:", "data:")) else route.abort()

        self.context.route("**/*", route)
        self.page = page = self.context.new_page()
        page.on("console", lambda m: m.type in ("error", "warning") and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        self.url = path.resolve().as_uri()
        page.goto(self.url)
        page.wait_for_selector("body[data-ready=true]", timeout=15_000)

    def external_requests(self) -> list[str]:
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser):
    opened = []

    def open_page(path: Path) -> Visit:
        opened.append(Visit(browser, path))
        return opened[-1]

    yield open_page
    for v in opened:
        v.close()


def test_the_run_page_loads_offline_and_every_image_decodes(report_runs, visit):
    v = visit(report_runs["dcgan"] / REPORT)
    assert v.errors == [] and v.external_requests() == []
    images = v.page.eval_on_selector_all(
        "img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth])"
    )
    assert len(images) >= 2 and all(width > 0 for _, width in images), images


def test_moving_the_slider_shows_that_steps_grid(report_runs, visit):
    run = report_runs["dcgan"]
    v = visit(run / REPORT)
    for index, step in [(0, 0), (2, 20), (3, 30), (1, 10)]:
        v.page.locator("#samples-slider").fill(str(index))
        src = v.page.get_attribute("#samples-frame", "src")
        png = (run / "samples" / f"step-{step:08d}.png").read_bytes()
        assert base64.b64decode(src.split(",", 1)[1]) == png
        assert v.page.text_content("#samples-step") == f"step {step}"
        assert v.page.evaluate("document.getElementById('samples-frame').naturalWidth") > 0


def test_every_curve_holds_every_logged_point(report_runs, visit):
    run = report_runs["dcgan"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    v = visit(run / REPORT)
    drawn = v.page.evaluate(
        """() => {
        const out = {};
        for (const [id, chart] of Object.entries(window.gankitReport.charts)) {
          let column = 1;  // uPlot's data: x, then one column per series
          for (const line of chart.spec.lines) {
            const values = chart.plot.data[column];
            out[line.key] = values.filter(v => v !== null && v !== undefined).length;
            column += line.smooth ? 2 : 1;  // a smoothed line is drawn raw and smoothed
          }
        }
        return out;
    }"""
    )
    assert {"loss/D", "loss/G", "D(x)", "eval/fid", "eval/recall"} <= set(drawn)
    for key, count in drawn.items():
        assert count == sum(key in r for r in rows), key


def test_the_screen_is_not_blank(report_runs, visit):
    v = visit(report_runs["dcgan"] / REPORT)
    v.page.locator("#evaluation").scroll_into_view_if_needed()
    shot = np.asarray(Image.open(io.BytesIO(v.page.screenshot())).convert("L"), dtype=float)
    assert shot.std() > 20  # text, curves and images, not a white page
    canvas = v.page.locator("#eval-fid canvas").first.screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(canvas)).convert("L"), dtype=float)
    assert (pixels < 200).mean() > 0.005  # the FID curve and its axes are drawn


@pytest.mark.parametrize("kind", ["cgan", "ae", "stopped", "diverged", "damaged"])
def test_every_kind_of_run_renders_without_error(report_runs, visit, kind):
    v = visit(report_runs[kind] / REPORT)
    assert v.errors == [] and v.external_requests() == []
    widths = v.page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert all(w > 0 for w in widths)
    assert v.page.evaluate("Object.keys(window.gankitReport.charts).length") >= 1


def test_the_comparison_page_lists_runs_and_switches_to_training_time(report_runs, visit, tmp_path):
    out = write_comparison([report_runs["dcgan"], report_runs["cgan"]], tmp_path / "c.html")
    v = visit(out)
    assert v.errors == [] and v.external_requests() == []
    runs = v.page.eval_on_selector_all("#runs tbody tr", "rows => rows.length")
    assert runs == 2
    assert "model.conditional" in v.page.text_content("#differences")
    fid_x = "window.gankitReport.charts['eval-fid'].plot.data[0]"
    steps = v.page.evaluate(fid_x)
    v.page.select_option("#x-axis", "seconds")
    seconds = v.page.evaluate(fid_x)
    assert steps[-1] == 30 and seconds != steps and v.errors == []


def test_a_divergence_after_the_last_row_is_marked_on_the_curves(report_runs, visit):
    v = visit(report_runs["diverged"] / REPORT)
    status = json.loads((report_runs["diverged"] / "status.json").read_text())
    rows = [
        json.loads(x) for x in (report_runs["diverged"] / "metrics.jsonl").read_text().splitlines()
    ]
    assert status["state"] == "diverged" and status["step"] > rows[-1]["step"]
    reach = v.page.evaluate("window.gankitReport.charts['train-losses'].plot.scales.x.max")
    assert reach >= status["step"]  # the axis reaches the divergence's dashed line
