"""HTML that lens writes opens in a real headless browser: it renders, runs without JavaScript errors and
draws every figure (each plotly div gets its SVG, with as many traces as the Python figure has).

Uses Debian's ``chromium`` with ``chromedriver`` (apt packages ``chromium chromium-driver``) through
``selenium`` (dev extra). ``scripts/test.sh`` installs the browser where it can (root with apt-get); elsewhere
these tests skip with the reason.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from lens.tools import plot

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra's browser driver) is absent")
    binary = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (scripts/test.sh does as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


FIGURE_STATE = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => {
  const box = d.getBoundingClientRect();
  return {traces: (d.data || []).length, svg: d.querySelectorAll('.main-svg').length,
          drawn: d.querySelectorAll('.trace, .heatmaplayer image, .imagelayer image').length,
          width: box.width, height: box.height};
});
"""


def open_page(browser, path, n_figures: int, timeout: float = 30) -> tuple[list[dict], list[str]]:
    """Load ``path``; wait until ``n_figures`` plotly divs have drawn; return their state and the JS errors."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # drop messages of earlier pages
    browser.get(path.resolve().as_uri())
    try:
        WebDriverWait(browser, timeout).until(
            lambda d: sum(f["svg"] > 0 for f in d.execute_script(FIGURE_STATE)) >= n_figures
        )
    except Exception:  # a timeout: report what the page shows instead
        pass
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    return browser.execute_script(FIGURE_STATE), errors


def assert_rendered(state: list[dict], errors: list[str], figures) -> None:
    assert errors == [], f"JavaScript errors: {errors}"
    assert len(state) == len(figures), f"{len(state)} plotly divs on the page, {len(figures)} figures written"
    for got, fig in zip(state, figures):
        assert got["svg"] > 0 and got["drawn"] > 0, f"figure {fig.layout.title.text!r} not drawn: {got}"
        assert got["traces"] == len(fig.data)
        assert got["width"] > 100 and got["height"] > 100


def all_figures() -> list:
    g = torch.Generator().manual_seed(0)
    toks = ["<bos>", " a", " b", " a"]
    pattern = torch.softmax(torch.randn(3, 4, 4, generator=g), -1).tril()
    return [
        plot.line(torch.randn(3, 10, generator=g), labels=["x", "y", "z"], title="line"),
        plot.imshow(torch.randn(4, 6, generator=g), title="imshow"),
        plot.attention_patterns(pattern, toks, title="slider", mode="slider"),
        plot.attention_patterns(pattern, toks, title="grid", mode="grid", cols=2),
        plot.patching_heatmap(torch.randn(2, 4, generator=g), toks, title="patching"),
        plot.logit_lens([["a", "b"], ["c", "d"]], torch.rand(2, 2, generator=g), ["<bos>", "x"], title="logit lens"),
        plot.logit_attribution_line(torch.randn(3, generator=g), ["embed", "0_attn_out", "0_mlp_out"], title="attr"),
        generation_trace_figure(),
    ]


def generation_trace_figure():
    """A real trace: the embedded zoo model with prompt lookup (accepted and rejected proposals are marked)."""
    from lens import zoo

    model = zoo.load("attn-only-2l")
    out = model.generate("import os\nimport sys\nimport os\nimport ", 12, prompt_lookup_num_tokens=5, output_trace=True,
                         trace_top_k=4)  # fmt: skip
    fig = plot.generation_trace(out.trace, model, title="generation trace")
    assert {t.name for t in fig.data} >= {"proposal accepted", "proposal rejected"}  # every marker kind is drawn
    return fig


def test_every_figure_kind_renders_standalone(browser, tmp_path):
    for i, fig in enumerate(all_figures()):
        page = plot.save_html(fig, tmp_path / f"fig{i}.html")
        assert_rendered(*open_page(browser, page, 1), [fig])


def test_report_of_all_figures_renders(browser, tmp_path):
    figs = all_figures()
    page = plot.figures_to_html(figs, tmp_path / "report.html", title="all <figures> & titles")
    state, errors = open_page(browser, page, len(figs))
    assert_rendered(state, errors, figs)
    assert browser.title == "all <figures> & titles"


def test_demo_report_renders(browser, tmp_path):
    from lens.__main__ import main

    assert main(["demo", "--out", str(tmp_path), "--max-new-tokens", "4"]) == 0
    page = tmp_path / "report.html"
    n = page.read_text().count("Plotly.newPlot")
    state, errors = open_page(browser, page, n)
    assert errors == [], f"JavaScript errors: {errors}"
    assert n > 0 and len(state) == n
    assert all(f["svg"] > 0 and f["drawn"] > 0 and f["traces"] > 0 for f in state), state


def test_the_check_sees_broken_pages(browser, tmp_path):
    """The checks above can fail: a script error is reported, and a figure whose data never arrives is not drawn."""
    fig = plot.line(torch.arange(5.0), title="broken")
    page = plot.save_html(fig, tmp_path / "broken.html")
    text = page.read_text()
    page.write_text(text.replace("</body>", "<script>undefinedFunctionCall();</script></body>"))
    state, errors = open_page(browser, page, 1)
    assert any("undefinedFunctionCall" in e for e in errors)

    no_plotly = tmp_path / "no_plotly.html"
    no_plotly.write_text(fig.to_html(full_html=True, include_plotlyjs=False))  # plotly.js missing: nothing draws
    state, errors = open_page(browser, no_plotly, 1, timeout=2)
    assert errors and not any(f["svg"] for f in state)
