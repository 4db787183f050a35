"""`gankit report`: one self-contained page per run (kept fresh while it trains) and one
comparing runs. Pages are checked as documents here (strict HTML, what they say, no absolute
path); tests/test_report_browser.py opens them in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import html5lib
import pytest

import gankit
from gankit.api import launch
from gankit.report import REPORT, RefreshReport, read_run, write_comparison, write_run_report

pytestmark = pytest.mark.slow  # every test here reads runs trained for it


def _page(run: Path) -> str:
    return (run / REPORT).read_text()


def _page_data(page: str) -> dict:
    found = re.search(
        r'<script type="application/json" id="gankit-data">(.*?)</script>', page, re.S
    )
    return json.loads(found.group(1).replace("<\\/", "</"))


KINDS = ["dcgan", "cgan", "ae", "stopped", "diverged", "damaged"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_page_is_strict_html_with_no_absolute_path(report_runs, kind):
    run = report_runs[kind]
    page = _page(run)
    html5lib.HTMLParser(strict=True).parse(page)  # raises at the first parse error
    root = str(run.resolve().parent)
    assert root not in page and str(Path.home()) not in page
    assert "http://" not in page.replace("http://www.w3.org", "")  # nothing to fetch
    assert "<link" not in page and 'src="http' not in page


def test_the_header_says_where_each_run_stands(report_runs):
    assert 'class="state finished"' in _page(report_runs["dcgan"])
    assert "finished all 30 steps" in _page(report_runs["dcgan"])
    stopped = read_run(report_runs["stopped"])
    assert stopped.state()[0] == "stopped"
    assert f"stopped at step {stopped.step:,} of 5,000: the time budget" in _page(
        report_runs["stopped"]
    )
    diverged = _page(report_runs["diverged"])
    assert 'class="state diverged"' in diverged
    assert "diverged: training diverged at step 20: " in diverged  # the first check after 15


def test_a_damaged_run_still_renders_saying_what_is_missing(report_runs):
    page = _page(report_runs["damaged"])
    assert "metrics.jsonl: 1 line(s) could not be read" in page
    assert "samples/ holds no grids" in page
    assert 'id="train-losses"' in page  # the good rows still make their curves


def test_the_page_is_refreshed_at_each_evaluation_with_its_numbers(report_runs):
    pages = report_runs["watcher"].pages
    assert sorted(pages) == [0, 10, 20, 30]
    for step, page in pages.items():
        fid = next(c for c in _page_data(page)["charts"] if c["id"] == "eval-fid")
        assert fid["x"]["step"][-1] == step  # the page written after it shows it
    final = _page_data(_page(report_runs["dcgan"]))
    rows = [
        json.loads(x) for x in (report_runs["dcgan"] / "metrics.jsonl").read_text().splitlines()
    ]
    for chart in final["charts"]:
        for line in chart["lines"]:
            logged = [r[line["key"]] for r in rows if line["key"] in r]
            assert [v for v in line["values"] if v is not None] == pytest.approx(logged)


def test_the_slider_holds_every_grid_of_a_short_run(report_runs):
    run = report_runs["dcgan"]
    frames = _page_data(_page(run))["frames"]["samples"]
    assert [f["step"] for f in frames] == [0, 10, 20, 30]
    assert frames[-1]["src"] is None  # the last is the page's own <img>


def test_the_conditional_page_names_its_classes_and_label_accuracy(report_runs):
    page = _page(report_runs["cgan"])
    assert "Each column is one class (0: T-shirt/top, 1: Trouser" in page
    assert "label_accuracy" in page
    assert 'id="eval-label-accuracy"' in page


def test_the_ae_page_shows_reconstructions_latent_space_and_interpolations(report_runs):
    run = report_runs["ae"]
    page = _page(run)
    assert 'id="reconstructions-slider"' in page
    assert (run / "figures" / "latent.png").stat().st_size > 0
    assert "The codes of real images, coloured by class" in page
    assert "Interpolations" in page


def test_the_class_histogram_shows_samples_against_the_real_data(report_runs):
    page = _page(report_runs["dcgan"])
    section = page[page.index('id="classes"') : page.index('id="latent"')]
    assert section.count('class="fill sample"') == 10 and section.count('class="fill real"') == 10
    assert "Trouser" in section


def test_the_page_says_which_evaluator_scored_the_run(report_runs, tmp_path):
    run = report_runs["dcgan"]
    facts = json.loads((run / "evaluator.json").read_text())  # written as training began
    assert facts["kind"] == "classifier" and facts["key"] == "f8d28dfb91bf381f"
    assert "a classifier trained on the data's labels (key f8d28dfb91bf381f" in unescape(_page(run))
    # a run scored by a self-supervised evaluator: its classes are the evaluator's clusters
    copy = shutil.copytree(run, tmp_path / "clusters")
    clusters = [f"cluster {i}" for i in range(10)]
    facts |= {"kind": "self-supervised (rotation)", "classes": clusters}
    (copy / "evaluator.json").write_text(json.dumps(facts))
    page = unescape(write_run_report(copy).read_text())
    assert "a self-supervised (rotation) network trained on the data without labels" in page
    section = page[page.index('id="classes"') : page.index('id="latent"')]
    assert "cluster 3" in section and "Trouser" not in section


def test_the_comparison_lists_runs_best_values_and_differing_keys(report_runs, tmp_path):
    out = write_comparison([report_runs["dcgan"], report_runs["cgan"]], tmp_path / "c.html")
    page = out.read_text()
    html5lib.HTMLParser(strict=True).parse(page)
    assert "<code>dcgan</code>" in page and "<code>cgan</code>" in page
    differing = page[page.index('id="differences"') : page.index('id="evaluation"')]
    assert "<code>model.conditional</code>" in differing
    assert "<code>train.seed</code>" not in differing  # the same in both
    assert page.count('class="num best"') >= 3
    data = _page_data(page)
    fid = next(c for c in data["charts"] if c["id"] == "eval-fid")
    assert [line["run"] for line in fid["lines"]] == ["dcgan", "cgan"]
    assert set(fid["x"]) == {"step", "seconds"}
    assert str(tmp_path) not in page


def test_gankit_report_on_the_command_line(report_runs, tmp_path, capsys):
    from gankit.cli import main

    copy = tmp_path / "run"
    shutil.copytree(report_runs["dcgan"], copy)
    (copy / REPORT).unlink()
    shutil.rmtree(copy / "figures")
    assert main(["report", str(copy)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (copy / REPORT).exists() and (copy / "figures" / "interpolation.png").exists()
    assert (
        main(["report", str(copy), str(report_runs["cgan"]), "--out", str(tmp_path / "x.html")])
        == 0
    )
    assert "2 runs compared" in (tmp_path / "x.html").read_text()
    assert main(["report", str(copy), "--out", str(tmp_path)]) == 0  # a folder: into it
    assert (tmp_path / REPORT).exists()
    assert main(["report", str(copy), str(copy)]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a gankit run folder" in capsys.readouterr().err


def test_a_report_that_cannot_be_written_never_stops_training(fashion, tmp_path, monkeypatch):
    import gankit.report as report

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_run_report", fail)
    config = gankit.configure("gan-002", steps=10, batch_size=16, log_every=5)
    trainer = launch(config, out=tmp_path / "r", data=fashion.subset(500), progress=False)
    assert trainer.fit().step == 10
    assert trainer.callback(RefreshReport).writes == 0
    assert not (tmp_path / "r" / REPORT).exists()


def test_report_can_be_turned_off(fashion, tmp_path):
    config = gankit.configure("gan-002", steps=5, batch_size=16, report=False)
    trainer = launch(config, out=tmp_path / "r", data=fashion.subset(500), progress=False)
    trainer.fit()
    assert trainer.callback(RefreshReport) is None and not (tmp_path / "r" / REPORT).exists()


def test_a_run_of_an_older_gankit_gets_its_page(tmp_path):
    """A v0.1 run folder has no status.json, grids or report: its page says so and still
    draws its curves from metrics.jsonl."""
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "v0.1-gan", old)
    page = write_run_report(old).read_text()
    html5lib.HTMLParser(strict=True).parse(page)
    assert 'class="state unknown"' in page and "no status.json" in page
    assert 'id="train-losses"' in page and "samples/ holds no grids" in page
