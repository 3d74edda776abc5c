"""The HTTP service: endpoints, limits, the token, and the web page driven in a real browser."""

from __future__ import annotations

import io
import shutil
import socket
import sys
import threading
import time

import numpy as np
import pytest
from conftest import random_model
from fastapi.testclient import TestClient
from PIL import Image
from test_index import write_images

import cliplab
from cliplab.checkpoints import write_checkpoint
from cliplab.index import index_paths
from cliplab.model import get_preset
from cliplab.serve import ServeSettings, create_app


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A random ViT-nano, a store of 12 images and 3 captions."""
    root = tmp_path_factory.mktemp("served")
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=1), root / "model", "cliplab")
    pipeline = cliplab.load(root / "model", device="cpu")
    write_images(root / "photos", 12)
    (root / "captions.csv").write_text("id,text\nc1,a red square\nc2,a blue circle\nc3,two dogs in snow\n")
    index_paths(pipeline, root / "store", [root / "photos"], captions=root / "captions.csv", workers=0, progress=False)
    return pipeline, root


def png_bytes(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def client(served):
    pipeline, root = served
    settings = ServeSettings(max_upload_bytes=200_000, max_image_pixels=1_000_000, max_text_chars=100, max_batch=4)
    return TestClient(create_app(pipeline, str(root / "store"), settings))


def test_health_and_openapi(client):
    health = client.get("/api/health").json()
    assert (health["status"], health["images"], health["texts"]) == ("ok", 12, 3)
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/search",
        "/api/search/image",
        "/api/search/item/{item_id}",
        "/api/classify",
        "/api/embed/texts",
        "/api/embed/image",
    } <= set(paths)


def test_search_by_text_image_and_item_agree_with_the_library(client, served):
    pipeline, root = served
    hits = client.get("/api/search", params={"q": "two dogs in snow", "k": 5}).json()["hits"]
    with cliplab.index.Searcher(pipeline, root / "store") as searcher:
        expected = searcher.text("two dogs in snow", k=5)
    assert [h["id"] for h in hits] == [h.item.id for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-5)
    assert all(h["thumbnail"] == f"/api/thumbnail/{h['id']}" for h in hits)
    assert "path" not in hits[0]  # file system paths stay on the server

    photo = (root / "photos" / "part0" / "img000.jpg").read_bytes()
    by_image = client.post("/api/search/image", files={"file": ("q.jpg", photo)}, data={"k": "3"}).json()["hits"]
    assert by_image[0]["name"] == "img000.jpg" and by_image[0]["score"] == pytest.approx(1.0, abs=1e-5)
    texts = client.get("/api/search", params={"q": "a red square", "k": 1, "target": "text"}).json()["hits"]
    assert texts[0]["text"] == "a red square"
    neighbours = client.get(f"/api/search/item/{by_image[0]['id']}", params={"k": 2}).json()["hits"]
    assert [h["id"] for h in neighbours] == [h["id"] for h in by_image[1:3]]

    thumb = client.get(f"/api/thumbnail/{by_image[0]['id']}")
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size[0] > 0


def test_classify_and_embed(client, served):
    pipeline, _ = served
    result = client.post(
        "/api/classify", files={"file": ("a.png", png_bytes())}, data={"labels": "a red thing, a green thing, a cat"}
    ).json()
    assert sorted(r["label"] for r in result) == ["a cat", "a green thing", "a red thing"]
    assert sum(r["probability"] for r in result) == pytest.approx(1.0, abs=1e-4)
    vectors = client.post("/api/embed/texts", json={"texts": ["a", "b"]}).json()["embeddings"]
    np.testing.assert_allclose(vectors, pipeline.embed_texts(["a", "b"]), atol=1e-5)
    vector = client.post("/api/embed/image", files={"file": ("a.png", png_bytes())}).json()["embedding"]
    np.testing.assert_allclose(vector, pipeline.embed_images([png_bytes()])[0], atol=1e-5)


@pytest.mark.parametrize(
    "request_args, status, message",
    [
        (("get", "/api/search", {"params": {"q": "x" * 101}}), 413, "limit is 100"),
        (("get", "/api/search", {"params": {"q": "   "}}), 422, "empty"),
        (("get", "/api/search", {"params": {"q": "a", "k": 0}}), 422, "k must be"),
        (("get", "/api/search", {"params": {"q": "a", "target": "audio"}}), 422, "target must be"),
        (("post", "/api/search/image", {"files": {"file": ("big.png", b"\0" * 200_001)}}), 413, "larger than"),
        (("post", "/api/search/image", {"files": {"file": ("a.png", b"not an image")}}), 422, "not an image"),
        (("post", "/api/search/image", {"files": {"file": ("e.png", b"")}}), 422, "empty"),
        (("post", "/api/search/image", {"files": {"file": ("huge.png", png_bytes((1100, 1000)))}}), 413, "pixels"),
        (("post", "/api/embed/texts", {"json": {"texts": ["a"] * 5}}), 413, "between 1 and 4"),
        (("get", "/api/search/item/999999", {}), 404, "no item"),
        (("get", "/api/thumbnail/999999", {}), 404, "no image"),
    ],
)
def test_bad_requests_get_a_clear_status_and_message(client, request_args, status, message):
    method, url, kwargs = request_args
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status
    assert message in str(response.json()["detail"])


@pytest.mark.parametrize(
    "path",
    [
        "/api/thumbnail/..%2F..%2Fetc%2Fpasswd",
        "/api/thumbnail/%2Fetc%2Fpasswd",
        "/../../etc/passwd",
        "/static/../../../etc/passwd",
    ],
)
def test_files_outside_the_store_are_never_served(client, path):
    response = client.get(path)
    assert response.status_code in (404, 422) and b"root:" not in response.content


def test_token_is_required_when_set(served):
    pipeline, root = served
    app = create_app(pipeline, str(root / "store"), ServeSettings(token="s3cret"))
    client = TestClient(app)
    assert client.get("/api/health").status_code == 200
    assert client.get("/api/search", params={"q": "a"}).status_code == 401
    assert client.get("/api/search", params={"q": "a"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/search", params={"q": "a"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/search", params={"q": "a", "token": "s3cret"}).status_code == 200


def test_oversized_bodies_are_refused_before_they_are_read_and_bearer_is_case_insensitive(served):
    pipeline, root = served
    client = TestClient(create_app(pipeline, str(root / "store"), ServeSettings(token="s3cret", max_upload_bytes=1000)))
    headers = {"Authorization": "bearer s3cret", "Content-Length": str(10**9)}
    response = client.post("/api/search", content=b"{}", headers=headers)
    assert response.status_code == 413 and "larger than 1000 bytes" in response.json()["detail"]
    assert client.get("/api/health").json() == {"status": "ok"}  # no store details without the token
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret"}).json()["images"] == 12


def test_serving_beyond_localhost_needs_a_token(served, capsys):
    from cliplab.cli import main

    _, root = served
    assert main(["serve", str(root / "store"), "--host", "0.0.0.0", "--model", str(root / "model")]) == 1
    assert "--token" in capsys.readouterr().err


def test_searches_see_an_index_update_while_serving(served, tmp_path):
    pipeline, root = served
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    client = TestClient(create_app(pipeline, str(store)))
    assert client.get("/api/health").json()["images"] == 12
    write_images(tmp_path / "more", 3, seed=9)
    index_paths(pipeline, store, [tmp_path / "more"], workers=0, progress=False)
    hits = client.get("/api/search", params={"q": "x", "k": 50}).json()["hits"]
    assert len(hits) == 15


# ------------------------------------------------------------------------------------------ browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(served):
    import uvicorn

    pipeline, root = served
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(pipeline, str(root / "store")), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("the browser test needs Debian's chromium: `make test` installs it (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        yield browser
        browser.close()


def test_web_page_searches_by_text_by_upload_and_by_clicking_a_result(browser, live_server, served):
    _, root = served
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(live_server + "/")
    page.fill("#query", "two dogs in snow")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .hit img")
    assert errors == []
    assert page.locator("#results .hit").count() == 12
    assert "12 results" in page.text_content("#status")
    scores = [float(t.split("·")[1]) for t in page.locator("#results .hit .meta").all_text_contents()]
    assert scores == sorted(scores, reverse=True)
    assert page.eval_on_selector("#results .hit img", "img => img.complete && img.naturalWidth > 0")

    page.set_input_files("#image-file", str(root / "photos" / "part1" / "img004.bmp"))
    page.wait_for_selector("text=results for img004.bmp")
    first = page.locator("#results .hit .meta").first.text_content()
    assert "img004.bmp" in first and "1.000" in first

    second = page.locator("#results .hit .meta").nth(1).text_content().split("·")[2].strip()
    page.locator("#results .hit").nth(1).click()
    page.wait_for_selector("text=results for item")
    assert page.locator("#results .hit").count() == 11  # all images but the clicked one
    assert page.input_value("#query") == f"like: {second}"  # the box says what is being searched
    assert second in page.text_content("#query-item") and page.is_visible("#query-item img")
    assert "item=" in page.url
    page.reload()  # the search lives in the address: a reload (or a shared link) shows it again
    page.wait_for_selector("text=results for item")
    assert page.locator("#results .hit").count() == 11 and page.input_value("#query") == f"like: {second}"

    page.select_option("#target", "text")
    page.fill("#query", "a blue circle")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .hit .text")
    assert page.locator("#results .hit .text").first.text_content() == "a blue circle"
    assert page.locator("#results .hit .meta").first.text_content().endswith("· c2")  # the text's key, not an id

    shared = browser.new_page()  # a bookmarked or shared search runs on load
    shared.goto(live_server + "/?q=two%20dogs%20in%20snow&target=text")
    shared.wait_for_selector("#results .hit .text")
    assert shared.input_value("#query") == "two dogs in snow" and shared.input_value("#target") == "text"
    shared.goto(live_server + "/docs")  # the API docs render with no network: Swagger UI is served locally
    shared.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    assert shared.locator(".opblock").count() >= 6
    shared.close()
    page.close()


def test_a_busy_port_is_one_clear_error_before_any_banner(served, capsys):
    from cliplab.cli import main

    _, root = served
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(root / "store"), "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert f"cannot listen on 127.0.0.1:{port}" in captured.err and "--port" in captured.err
    assert "http://" not in captured.out


def test_a_missing_extra_is_one_line_naming_the_install(served, monkeypatch, capsys):
    from cliplab.cli import main

    _, root = served
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if FastAPI were not installed
    assert main(["serve", str(root / "store")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "cliplab serve: error: cliplab serve needs the Python package 'fastapi', which is not installed: "
        "pip install 'cliplab[serve]'"
    )
