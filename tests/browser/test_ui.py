"""/ui in a real headless Chromium against a served tiny model: the three tools, the API key prompt, and no
request leaving the server's origin."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.browser import chromium, open_ui, requested_urls, run_tool, wait_for
from tests.server_process import running_server

TEXT = "the drug worked and my headache was less"


def test_explain_draws_one_cell_per_token_and_a_layers_by_heads_grid(page, server, tmp_path):
    open_ui(page, server)
    run_tool(page, "explain", TEXT)
    expected = httpx.post(f"{server}/v1/explain", json={"inputs": TEXT, "attention": True}, timeout=60).json()
    (explanation,) = expected["explanations"]
    cells = page.find_elements("css selector", "#heatmap .token-cell")
    assert [cell.find_element("css selector", "span").text for cell in cells] == explanation["tokens"]
    signs = [cell.find_element("css selector", ".value").text[0] for cell in cells]
    assert signs == ["\u2212" if a < 0 else "+" for a in explanation["attributions"]]
    heads = page.find_elements("css selector", "#head-grid canvas.head")
    assert len(heads) == 2 * 4  # tiny_config: 2 layers x 4 heads
    assert {(h.get_attribute("data-layer"), h.get_attribute("data-head")) for h in heads} == {
        (str(layer), str(head)) for layer in range(2) for head in range(4)
    }
    heads[1].click()  # layer 1, head 2
    assert page.find_element("id", "head-zoom-title").text.startswith("layer 1, head 2")
    assert "selected" in heads[1].get_attribute("class")
    shot = tmp_path / "explain.png"
    assert page.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classify_shows_a_bar_per_label(page, server):
    open_ui(page, server)
    run_tool(page, "classify", TEXT)
    expected = httpx.post(f"{server}/v1/classify", json={"inputs": TEXT}).json()["predictions"][0]
    rows = page.find_elements("css selector", "#classify-bars > span:not(.meta)")
    assert [row.text for row in rows] == [item["label"] for item in expected]
    bars = page.find_elements("css selector", "#classify-bars .bar")
    widths = [float(bar.value_of_css_property("width").removesuffix("px")) for bar in bars]
    track = float(bars[0].find_element("xpath", "..").value_of_css_property("width").removesuffix("px"))
    assert [w / track for w in widths] == pytest.approx([item["score"] for item in expected], abs=0.01)


def test_fill_mask_lists_the_candidates_and_versions_can_be_picked(page, server):
    open_ui(page, server)
    page.find_element("css selector", 'nav button[data-tool="classify"]').click()
    versions = page.find_element("id", "classify-version")
    options = [o.get_attribute("value") for o in versions.find_elements("tag name", "option")]
    assert options == ["", "@1", "@2", ":production"]
    run_tool(page, "fill-mask", "i took the [MASK] and my pain was less")
    expected = httpx.post(
        f"{server}/v1/fill-mask", json={"inputs": "i took the [MASK] and my pain was less"}
    ).json()["predictions"][0][0]
    names = page.find_elements("css selector", "#fill-mask-masks .bars > span:not(.meta)")
    assert [name.text for name in names] == [item["token_str"] for item in expected]
    urls = requested_urls(page, server)
    assert f"{server}/v1/fill-mask" in urls
    outside = [url for url in urls if not url.startswith(f"{server}/")]
    assert outside == [], "the page asked for something outside the server"


def test_with_api_keys_the_page_asks_for_the_key_and_keeps_it_in_the_tab(tiny_store):
    with (
        running_server(tiny_store.root, env={"BERTSERVE_API_KEYS": "secret-key"}) as base,
        chromium() as page,
    ):
        page.get(f"{base}/ui")
        dialog = page.find_element("id", "key-dialog")
        wait_for(page, dialog.is_displayed)
        page.find_element("id", "key-input").send_keys("secret-key")
        page.find_element("id", "key-submit").click()
        wait_for(page, lambda: page.find_element("tag name", "body").get_attribute("data-ready") == "true")
        run_tool(page, "classify")
        assert page.find_elements("css selector", "#classify-bars .bar")
        stored = page.execute_script("return [localStorage.length, sessionStorage.length, document.cookie]")
        assert stored == [0, 0, ""]
