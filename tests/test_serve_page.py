"""Issue 11: the web page at / driven in headless Chromium (Debian's chromium and
chromium-driver, through Selenium): pick a model, upload an image, read the ranked results,
the server-side latency and, for an encoder with attention, the heat map."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

import vlmedge  # noqa: E402
from tests.serve_support import IMAGES, chromium, needs_chromium, running, serve_artifact  # noqa: E402
from vlmedge.serve import create_app  # noqa: E402

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def page(vit_artifact, tmp_path_factory):
    pipelines = {"shapes": vlmedge.load(vit_artifact, backend="onnxruntime"),
                 "dino": vlmedge.load(serve_artifact("dino", tmp_path_factory), backend="onnxruntime")}
    with running(create_app(pipelines)) as url:
        yield url, pipelines


def _run_on(browser, url: str, model: str, image) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 30)
    if not browser.current_url.startswith(url):
        browser.get(url + "/")
    wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
    Select(browser.find_element(By.ID, "model")).select_by_value(model)
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(ec.element_to_be_clickable((By.ID, "run"))).click()
    wait.until(lambda d: "server latency" in d.find_element(By.ID, "latency").text
               or d.find_element(By.ID, "error").text)


def test_upload_an_image_and_read_the_ranked_labels(browser, page, tmp_path):
    from selenium.webdriver.common.by import By

    url, pipelines = page
    _run_on(browser, url, "shapes", IMAGES[0])
    assert browser.find_element(By.ID, "error").text == ""
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .row")
    expected = pipelines["shapes"].classify(IMAGES[0], top_k=5)
    assert [r.find_element(By.CLASS_NAME, "name").text for r in rows] == [p.label for p in expected]
    shown = rows[0].find_element(By.CLASS_NAME, "score").text
    assert shown == f"{100 * expected[0].score:.2f}%"
    assert browser.find_element(By.ID, "latency").text.startswith("server latency ")
    browser.save_screenshot(str(tmp_path / "classify.png"))


def test_an_encoder_shows_its_attention_map(browser, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = page
    _run_on(browser, url, "dino", IMAGES[1])
    assert browser.find_element(By.ID, "error").text == ""
    assert "32-dimensional embedding" in browser.find_element(By.ID, "results").text
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(
        "const i = document.getElementById('attention-img'); return i && i.complete && i.naturalWidth > 0;"))


def test_a_bad_file_shows_the_servers_message(browser, page, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = page
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    _run_on(browser, url, "shapes", bogus)
    assert browser.find_element(By.ID, "error").text.startswith("422 invalid_input: images[0] is not a readable image")
