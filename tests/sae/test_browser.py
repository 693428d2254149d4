"""lens.sae.feature_browser: the page opens in headless Chromium without JavaScript errors, draws its figures,
and shows what lens.sae.features computed (the index, each feature's top contexts with the activating token
marked, its logit effects, its histogram); the search box filters; the same inputs give the same bytes.

The page's numbers are checked against :func:`lens.sae.top_activations` / :func:`lens.sae.logit_effects`
(themselves tested against brute force in test_features.py), read back from the rendered DOM."""

from __future__ import annotations

import pytest
import torch

import lens.sae
from tests.sae.test_features import make_sae
from tests.sae.test_features import model as model  # noqa: F401  (the fixture)
from tests.sae.test_features import tokens as tokens  # noqa: F401  (the fixture)
from tests.test_html_in_browser import browser as browser  # noqa: F401  (the fixture)
from tests.test_html_in_browser import open_page

FEATURES = list(range(12))  # 0..3 are dead (make_sae)


@pytest.fixture(scope="module")
def page(model, tokens, tmp_path_factory):  # noqa: F811
    sae = make_sae("topk")
    top = lens.sae.top_activations(model, sae, tokens, features=FEATURES, k=5)
    path = lens.sae.feature_browser(model, sae, None, tmp_path_factory.mktemp("browser") / "f.html", result=top)
    return sae, top, path


def _text(browser, css):  # noqa: F811
    return browser.execute_script(f"return Array.from(document.querySelectorAll({css!r})).map(e => e.textContent)")


def test_the_page_renders_and_shows_the_features(browser, page, model, tokens):  # noqa: F811
    sae, top, path = page
    state, errors = open_page(browser, path, n_figures=1)
    assert errors == [], errors
    assert len(state) == 1 and state[0]["svg"] > 0 and state[0]["drawn"] > 0  # the density histogram
    ids = [int(t) for t in _text(browser, "#feature-table tbody tr td:first-child")]
    assert ids == FEATURES
    dead = browser.execute_script("return Array.from(document.querySelectorAll('tr.dead')).map(r => r.dataset.feature)")
    assert [int(f) for f in dead] == [f for f in FEATURES if top.fires[f] == 0] and len(dead) >= 4

    live = next(f for f in FEATURES if top.fires[f] > 0)
    browser.find_element("id", f"feature-row-{live}").click()
    figs = browser.execute_script("""return ['logit-figure', 'hist-figure'].map(id => {
        const d = document.getElementById(id); return {svg: d.querySelectorAll('.main-svg').length,
        traces: (d.data || []).length, bars: d.querySelectorAll('.bars path, .point path').length}; });""")
    assert [f["traces"] for f in figs] == [2, 1] and all(f["svg"] > 0 and f["bars"] > 0 for f in figs), figs
    assert browser.execute_script("return document.getElementById('feature-view').hidden") is False
    # the contexts: one line per top activation, the hit token outlined
    lines = _text(browser, "#contexts .context")
    assert len(lines) == int(top.counts[top.row(live)])
    hits = browser.execute_script(
        "return Array.from(document.querySelectorAll('#contexts .tok.hit')).map(s => s.title)"
    )
    for j, title in enumerate(hits):
        pos, ctx = int(top.positions[top.row(live), j]), int(top.contexts[top.row(live), j])
        assert f"pos {pos}" in title
        assert f"id {int(tokens[ctx, pos])}" in title
    # the logit table: the promoted tokens and values logit_effects gives
    eff = lens.sae.logit_effects(model, sae, live, k=10)
    cells = _text(browser, "#logit-table tr td")
    promoted_values = [float(c) for c in cells[5::4][: len(eff.top_values)]]
    torch.testing.assert_close(torch.tensor(promoted_values), eff.top_values.float(), rtol=2e-3, atol=1e-3)
    assert errors == [] and not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_a_dead_feature_says_so_and_the_search_filters(browser, page):  # noqa: F811
    _, top, path = page
    open_page(browser, path, n_figures=1)
    browser.get(path.resolve().as_uri() + "#feature-0")  # the URL hash selects a feature
    browser.refresh()
    assert "never fired" in browser.find_element("id", "contexts").text
    search = browser.find_element("id", "search")
    search.send_keys("1")  # ids starting with 1: 1, 10, 11
    shown = browser.execute_script("return Array.from(document.querySelectorAll('#feature-table tbody tr'))"
                                   ".filter(r => !r.hidden).map(r => Number(r.dataset.feature))")  # fmt: skip
    assert shown == [f for f in FEATURES if str(f).startswith("1")]
    browser.find_element("id", "hide-dead").click()
    browser.execute_script(
        "const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'))"
    )
    shown = browser.execute_script("return Array.from(document.querySelectorAll('#feature-table tbody tr'))"
                                   ".filter(r => !r.hidden).map(r => Number(r.dataset.feature))")  # fmt: skip
    assert shown == [f for f in FEATURES if top.fires[f] > 0]
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_same_inputs_give_the_same_bytes(model, tokens, tmp_path):  # noqa: F811
    sae = make_sae("topk")
    a = lens.sae.feature_browser(model, sae, tokens, tmp_path / "a.html", features=FEATURES, k=5)
    b = lens.sae.feature_browser(model, sae, tokens, tmp_path / "b.html", features=FEATURES, k=5)
    assert a.read_bytes() == b.read_bytes()


def test_the_feature_figures_render(browser, page, model, tmp_path):  # noqa: F811
    from lens.tools.plot import save_html
    from tests.test_html_in_browser import assert_rendered

    sae, top, _ = page
    live = next(f for f in FEATURES if top.fires[f] > 0)
    figures = [
        lens.sae.density_histogram(top),
        lens.sae.logit_effects_figure(lens.sae.logit_effects(model, sae, live, k=8)),
        lens.sae.activation_histogram(top, live),
    ]
    for i, fig in enumerate(figures):
        state, errors = open_page(browser, save_html(fig, tmp_path / f"fig{i}.html"), n_figures=1)
        assert_rendered(state, errors, [fig])
