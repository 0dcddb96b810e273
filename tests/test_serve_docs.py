"""First-run item 9: /docs is a browsable API page shipped in the package (no CDN: it loads
nothing but itself and /openapi.json), rendered in headless Chromium: every operation of
the OpenAPI document is listed, and opening one shows its request fields and responses."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests.serve_support import chromium, needs_chromium, running  # noqa: E402
from vlmedge.serve import create_app  # noqa: E402
from vlmedge.tasks import load  # noqa: E402

@pytest.fixture(scope="module")
def server(vit_artifact):
    with running(create_app({"shapes": load(vit_artifact, backend="onnxruntime")})) as url:
        yield url


def test_the_page_is_shipped_and_self_contained(server):
    from importlib import resources

    page = httpx.get(f"{server}/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.text == resources.files("vlmedge.serve").joinpath("static/docs.html").read_text(encoding="utf-8")
    # nothing fetched from elsewhere: no src/href to another host, no @import
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text) and "@import" not in page.text
    assert 'fetch("/openapi.json")' in page.text


@needs_chromium
def test_the_page_lists_every_operation_in_chromium(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as browser:
        browser.get(f"{server}/docs")
        WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.loaded === 'true'"))
        assert browser.find_element(By.ID, "error").text == ""
        schema = httpx.get(f"{server}/openapi.json").json()
        expected = [(method, path) for path, item in schema["paths"].items() for method in item]
        shown = [(op.find_element(By.CLASS_NAME, "method").text.lower(), op.find_element(By.CLASS_NAME, "path").text)
                 for op in browser.find_elements(By.CSS_SELECTOR, "#operations details.op")]
        assert shown == expected
        classify = browser.find_element(By.ID, "op-shapes-classify")
        classify.find_element(By.TAG_NAME, "summary").click()
        fields = [row.find_element(By.TAG_NAME, "code").text for row in classify.find_elements(By.CSS_SELECTOR, "tr.field")]
        assert "images *" in fields and "top_k" in fields
        codes = [row.find_element(By.TAG_NAME, "code").text for row in classify.find_elements(By.CSS_SELECTOR, "tr.response")]
        assert codes[0] == "200" and "503" in codes
        assert "/v2/models/{model}[/versions/1]/infer" in browser.find_element(By.ID, "protocols").get_attribute("textContent")
        assert browser.title == "vlmedge serve · API"
