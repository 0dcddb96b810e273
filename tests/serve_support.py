"""Helpers for the `vlmedge serve` tests: one small artifact per task (built once per test
session and shared between modules) and a server running in a thread on 127.0.0.1 at a
free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "exporters" / "sample_data"
IMAGES = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))
AUDIO = sorted((SAMPLES / "audio").iterdir())

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs a Chromium browser and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")


@contextlib.contextmanager
def chromium() -> Iterator:
    """Headless Chromium through Selenium and the system's chromedriver (never a download)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def serve_artifact(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small exported artifact of a task: "dino" (image embedding with attention), "clip" or
    "ast"; built on first use and reused by every module of the session (it lives under the
    session's basetemp). Classification uses conftest's vit_artifact."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import vlmedge

    root = tmp_path_factory.getbasetemp() / "serve-artifacts"
    out = root / kind
    if (out / "manifest.json").is_file():
        return out
    source = root / f"source-{kind}"
    if kind == "dino":
        from tests.test_image_embedding import tiny_encoder

        model, processor = tiny_encoder("dino")
        model.save_pretrained(source)
        processor.save_pretrained(source)
    elif kind == "clip":
        from tests.clip_models import tiny_clip_folder

        source = tiny_clip_folder("clip", root / "source-clip")
    elif kind == "ast":
        from tests.test_audio_tagging import CONFIGS, tiny_ast

        tiny_ast("multi-sigmoid").save_pretrained(source)
        transformers.ASTFeatureExtractor(**CONFIGS["multi-sigmoid"][1]).save_pretrained(source)
    else:
        raise ValueError(kind)
    vlmedge.export(str(source), out)
    return out


@contextlib.contextmanager
def running(app, ready: bool = True) -> Iterator[str]:
    """Runs the app with uvicorn in a thread on 127.0.0.1:<free port>; yields its base URL."""
    import httpx
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        while ready and httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not become ready")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text exposition (0.0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
