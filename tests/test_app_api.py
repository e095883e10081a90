"""The running app over HTTP (loopback only): each named endpoint, bad inputs and bad
arguments, closed routes, inline data: images, concurrent calls, files that expire, memory
under large uploads, and `python app.py` started without weights."""

import base64
import http.server
import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port, unlike_any_class
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import common.photo

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.jpg"))
CAT = str(REPO / "examples" / "cat_0003.jpg")
CLASSES = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def call(url: str, endpoint: str, data: list, timeout: float = 60) -> tuple[str, str]:
    """One call over gradio's plain HTTP API: ("complete" or "error", the data line)."""
    response = httpx.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=timeout)
    response.raise_for_status()
    stream = httpx.get(f"{url}gradio_api/call/{endpoint}/{response.json()['event_id']}", timeout=timeout)
    lines = [line for line in stream.text.splitlines() if line]
    return lines[-2].removeprefix("event: "), lines[-1].removeprefix("data: ")


def data_url(image: Image.Image, fmt: str = "PNG") -> dict:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return {
        "url": f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode(),
        "meta": {"_type": "gradio.FileData"},
    }


def test_view_and_predict(client):
    assert Image.open(client.predict(handle_file(CAT), api_name="/view")).size == (32, 32)
    result = client.predict(handle_file(CAT), api_name="/predict")
    assert result["label"] in CLASSES
    confidences = [c["confidence"] for c in result["confidences"]]
    assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True)
    assert 0 < sum(confidences) <= 1 + 1e-6
    # Flip TTA is the second, optional argument: the mean of the image's and its mirror's logits.
    mirrored = client.predict(handle_file(CAT), True, api_name="/predict")
    assert mirrored["label"] in CLASSES and mirrored["confidences"] != result["confidences"]


def test_classify_answers_with_both_models_calibrated(client):
    both = client.predict(handle_file(CAT), api_name="/classify")
    assert set(both) == {"vit", "cnn", "both"}
    together = both.pop("both")  # the two scores judged together: what the page says
    assert set(together) == {"known", "score"} and together["known"] is True
    for said in both.values():
        assert set(said) == {"label", "confidences", "known", "score"}
        assert set(said["confidences"]) == CLASSES and sum(said["confidences"].values()) == pytest.approx(1)
        assert said["label"] == max(said["confidences"], key=said["confidences"].get)
        assert isinstance(said["known"], bool) and isinstance(said["score"], float)
    # One probability per class on the page: /predict's top 5 are /classify's ViT figures.
    top = client.predict(handle_file(CAT), api_name="/predict")["confidences"]
    assert all(c["confidence"] == pytest.approx(both["vit"]["confidences"][c["label"]]) for c in top)
    verdict, cnn = client.predict(handle_file(CAT), api_name="/compare")
    assert verdict.startswith(f"ViT: **{both['vit']['label']}**") or "does not look like" in verdict
    assert cnn["label"] == both["cnn"]["label"]


def test_a_photo_of_none_of_the_classes_is_flagged_by_the_two_models_together(client, tmp_path):
    said = client.predict(handle_file(str(unlike_any_class(tmp_path))), api_name="/classify")
    assert said["vit"]["known"] is False and said["vit"]["label"] in CLASSES
    assert said["both"]["known"] is False
    verdict, _ = client.predict(handle_file(str(unlike_any_class(tmp_path))), api_name="/compare")
    assert verdict.startswith(
        "This does not look like any of the 10 classes to the two models together; "
        f"the closest is **{said['vit']['label']}** ("
    )
    assert f"for the ViT and **{said['cnn']['label']}** (" in verdict


def test_requests_use_the_model_loaded_at_start_up(client, monkeypatch):
    monkeypatch.setattr("vit_model.ViT.from_pretrained", lambda *a, **k: pytest.fail("a request loaded the model"))
    assert client.predict(handle_file(CAT), api_name="/predict")["label"] in CLASSES


def test_augment(client):
    gallery = client.predict(handle_file(CAT), 3, 7, api_name="/augment")
    assert [item["caption"] for item in gallery] == ["input, 32x32", "augmented 1", "augmented 2", "augmented 3"]
    assert Image.open(gallery[1]["image"]).size == (128, 128)
    again = client.predict(handle_file(CAT), 3, 7, api_name="/augment")
    assert np.array_equal(np.asarray(Image.open(gallery[3]["image"])), np.asarray(Image.open(again[3]["image"])))


def test_patches(client):
    grid, sequence, caption = client.predict(handle_file(CAT), 8, api_name="/patches")
    assert Image.open(grid).size == (4 * 64 + 3 * 4,) * 2
    assert Image.open(sequence).size[0] > Image.open(sequence).size[1]
    assert "16 patches of 8x8" in caption


def test_rollout(client):
    figure, blocks, caption = client.predict(handle_file(CAT), "max", 0.3, "head 1", api_name="/rollout")
    assert Image.open(figure).size == (2 * 256 + 8, 256 + 8 + 14)
    assert [b["caption"] for b in blocks] == [f"block {i}" for i in range(1, 7)]
    assert caption.startswith("Explaining **")
    # No probability beside the class: the top 5 (with or without flip TTA) is the one place for it.
    assert "%" not in caption


def test_a_visitors_own_classifier_keeps_its_answer_and_has_its_map_apart(client):
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]

    def shape(name: str) -> tuple[list[str], list[str]]:
        return [p["component"] for p in info[name]["parameters"]], [r["component"] for r in info[name]["returns"]]

    assert shape("/own") == (["Image"], ["Label"])  # as API users have called it
    assert shape("/own_map") == (["Image"], ["Image", "Markdown"])
    # A caller's session holds no classifier (one is trained on the page): nothing to say.
    assert client.predict(handle_file(CAT), api_name="/own") == {}  # gradio's empty Label
    assert client.predict(handle_file(CAT), api_name="/own_map") == (None, "")


def test_mistakes(client):
    gallery, summary = client.predict("cat", "any", api_name="/mistakes")
    assert gallery and all(item["caption"].startswith("cat → ") for item in gallery)
    assert "sample images wrong" in summary


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    Image.new("RGB", (1, 1)).save(root / "one.png")
    (root / "notes.txt").write_text("not an image")
    Image.new("RGB", (40, 40)).save(root / "drawing.eps")
    Image.new("1", (10000, 10000)).save(root / "huge.png")
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "full.jpg")
    (root / "cut.jpg").write_bytes((root / "full.jpg").read_bytes()[:6000])
    return root


@pytest.mark.parametrize(
    "name, message",
    [
        (None, "No image: upload a photo or pick one of the examples first."),
        ("notes.txt", "Unsupported format: this app reads JPEG, PNG, GIF, WebP, BMP, TIFF or AVIF"),
        ("drawing.eps", "Unsupported format"),
        ("one.png", "The image is 1x1 pixels; it needs at least 8x8"),
        ("huge.png", "The image is 10000x10000 (100 megapixels), more than the 25 megapixels"),
        ("cut.jpg", "The image file is damaged or incomplete"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/view", "/predict", "/rollout"])
def test_bad_input_gets_a_readable_message(client, bad_files, name, message, endpoint):
    image = None if name is None else handle_file(str(bad_files / name))
    extra = ["mean", 0.0, "mean"] if endpoint == "/rollout" else []
    with pytest.raises(AppError) as err:
        client.predict(image, *extra, api_name=endpoint)
    assert str(err.value).startswith(message)
    assert "Traceback" not in str(err.value)


@pytest.mark.parametrize(
    "endpoint, data, message",
    [
        ("augment", [None, "x", 7], "must be a whole number from 1 to 32, not 'x'"),
        ("augment", [None, 3, [1]], "The seed must be a whole number"),
        ("rollout", [None, "mean", None, "mean"], "discard ratio must be at least 0"),
        ("patches", [None, "eight"], "The patch size must be a number, one of 1, 2, 4, 8, 16, 32, not 'eight'"),
        ("patches", [None, 3], "Patch size 3 does not divide 32"),
        ("predict", [12, False], "The image must be a file (gradio_client.handle_file(path)) or a base64"),
        ("predict", ["cat.jpg", False], "The image must be a file"),
        ("predict", [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, False], "/etc/passwd"),
        ("predict", [{"path": CAT}, False], "The image must be a file (gradio_client.handle_file(path))"),
        ("predict", [None, "yes"], "Flip TTA must be true or false, not 'yes'"),
        ("view", [{"path": "/etc/hostname"}], "The image must be a file (gradio_client.handle_file(path))"),
        ("mistakes", ["cat", 3], "The predicted class must be one of any, airplane"),
    ],
)
def test_arguments_of_the_wrong_kind_get_a_message(app_url, endpoint, data, message):
    kind, text = call(app_url, endpoint, data)
    assert kind == "error" and message in text, text


def test_inline_images_meet_the_upload_limits(app_url):
    kind, text = call(app_url, "predict", [data_url(Image.new("RGB", (40, 40), "red")), False])
    assert kind == "complete" and '"label"' in text
    kind, text = call(app_url, "predict", [data_url(Image.new("1", (12000, 12000))), False])
    assert kind == "error" and "12000x12000 (144 megapixels), more than the 25 megapixels" in text
    # Gradio keeps every session's last inputs in memory: inline images are held small.
    oversized = {"url": "data:image/png;base64," + "A" * 2_800_000, "meta": {"_type": "gradio.FileData"}}
    kind, text = call(app_url, "view", [oversized], timeout=120)
    assert kind == "error" and "inline images up to 2 MB are accepted: upload bigger ones" in text


def test_routes_around_the_queue_are_closed(app_url):
    for route in ("run/predict", "api/predict", "run/rollout"):
        response = httpx.post(f"{app_url}gradio_api/{route}", json={"data": [{"path": CAT}]})
        assert response.status_code == 404, route
    assert httpx.get(f"{app_url}gradio_api/monitoring/summary").status_code >= 400
    big = httpx.post(
        f"{app_url}gradio_api/queue/join",
        content=b"{" + b" " * 3_100_000,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert big.status_code == 413 and "send images as file uploads" in big.text
    # Only Gradio's own upload route streams to disk; a name that merely ends in /upload
    # is held to the limit like every other route (or is no endpoint at all).
    for route in ("queue/upload", "upload/x/upload"):
        big = httpx.post(f"{app_url}gradio_api/{route}", content=b" " * 3_100_000, timeout=60)
        assert big.status_code == 413 and "send images as file uploads" in big.text, route
    big = httpx.post(f"{app_url}gradio_api/call/upload", content=b" " * 3_100_000, timeout=60)
    assert big.status_code == 404 and "No endpoint named 'upload'" in big.text


def test_32_concurrent_predictions_all_succeed(app_url):
    client = Client(app_url, verbose=False)
    jobs = [client.submit(handle_file(str(EXAMPLES[i % len(EXAMPLES)])), api_name="/predict") for i in range(32)]
    results = [job.result(timeout=120) for job in jobs]
    # Each job answered for its own image: as that image alone gets answered.
    alone = [client.predict(handle_file(str(path)), api_name="/predict") for path in EXAMPLES]
    assert len({r["label"] for r in alone}) > 1  # the images do tell apart
    assert results == [alone[i % len(EXAMPLES)] for i in range(32)]


def test_concurrent_identical_requests_get_whole_files(app_url):
    client = Client(app_url, verbose=False, download_files=False)
    jobs = [client.submit(handle_file(CAT), "mean", 0.2, "head 3", api_name="/rollout") for _ in range(16)]

    def fetch(job):  # downloaded while the other jobs are still writing the same picture
        figure = job.result(timeout=120)[0]
        response = httpx.get(figure["url"], timeout=60)
        response.raise_for_status()
        return response.content

    with ThreadPoolExecutor(8) as pool:
        pictures = list(pool.map(fetch, jobs))
    assert len(set(pictures)) == 1 and Image.open(io.BytesIO(pictures[0])).size == (520, 278)


def test_inline_images_are_kept_for_a_bounded_number_of_sessions(monkeypatch):
    import app
    from space.model_source import Loaded

    monkeypatch.setattr(app, "STATE_SESSIONS", 3)
    demo = app.build_demo(Loaded(None, "no model: /view works without one"))
    port = free_port()
    app.serve(demo, "127.0.0.1", port, block=False)
    try:
        for color in ("red", "green", "blue", "white", "black"):  # each call is a session
            image = data_url(Image.new("RGB", (40, 40), color))
            assert call(f"http://127.0.0.1:{port}/", "view", [image])[0] == "complete"
        assert len(demo.state_holder.session_data) == 3
    finally:
        demo.close()


def test_uploads_and_pictures_expire(tmp_path):
    import app

    demo = app.build_demo(app.load_model(str(app.BUNDLED_WEIGHTS)), out=None, delete_cache=(1, 2))
    port = free_port()
    app.serve(demo, "127.0.0.1", port, block=False)
    try:
        Image.new("RGB", (48, 48), "blue").save(tmp_path / "blue.png")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        picture = Path(client.predict(handle_file(str(tmp_path / "blue.png")), api_name="/view")["path"])
        uploads = [Path(p) for p in demo.upload_file_set]
        assert picture.exists() and uploads and all(p.exists() for p in uploads)
        deadline = time.monotonic() + 30
        while (picture.exists() or any(p.exists() for p in uploads)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not picture.exists() and not any(p.exists() for p in uploads)
    finally:
        demo.close()


def start_app(tmp_path, env_model: str) -> tuple[subprocess.Popen, Client]:
    port = free_port()
    env = {**os.environ, "VIT_CIFAR_MODEL": env_model, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            return proc, Client(f"http://127.0.0.1:{port}/", verbose=False)
        except Exception:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the app did not start within 120 s"
            time.sleep(1)


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc (Linux)")
def test_32_concurrent_25_megapixel_uploads_stay_within_memory(tmp_path):
    y, x = np.mgrid[0:5000, 0:5000]
    pixels = np.stack([(x // 20) % 256, (y // 20) % 256, ((x + y) // 40) % 256], -1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "25mp.png")
    del x, y, pixels
    proc, client = start_app(tmp_path, str(REPO / "weights"))
    try:
        client.predict(handle_file(CAT), api_name="/predict")
        idle, peak = resident_mb(proc.pid), 0.0
        # /predict decodes every call (/view would answer a repeat from memory).
        jobs = [client.submit(handle_file(str(tmp_path / "25mp.png")), api_name="/predict") for _ in range(32)]
        while not all(job.done() for job in jobs):
            peak = max(peak, resident_mb(proc.pid))
            time.sleep(0.05)
        assert all(job.result()["label"] in CLASSES for job in jobs)
        time.sleep(2)
        after = resident_mb(proc.pid)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    # Two decodes at a time (25 MP RGB: 75 MB each, plus conversions); measured: +230 MB
    # at the peak, +50 MB after.
    assert peak < idle + 800 and peak < 1600, (idle, peak)
    assert after < idle + 300, (idle, after)


def test_app_without_weights_starts_and_says_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    proc, client = start_app(tmp_path, str(tmp_path / "empty"))
    try:
        with pytest.raises(AppError, match="No trained model is loaded"):
            client.predict(handle_file(CAT), api_name="/predict")
        assert "16 patches" in client.predict(handle_file(CAT), 8, api_name="/patches")[2]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert f"No trained model is loaded (no usable weights in {tmp_path / 'empty'}" in output


def test_an_image_given_by_web_address_is_refused_before_anything_fetches_it(app_url):
    fetched = []

    class Server(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            fetched.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(Path(CAT).read_bytes())

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_port}/cat.jpg"
    meta = '"meta": {"_type": "gradio.FileData"}'
    # Plain, with JSON's escaped slashes, and with a \u escape: the same address to Gradio.
    bodies = [
        f'{{"data": [{{"path": "{address}", {meta}}}]}}',
        f'{{"data": [{{"path": "{address.replace("/", chr(92) + "/")}", {meta}}}]}}',
        f'{{"data": [{{"path": "\\u0068{address[1:]}", {meta}}}], "fn_index": 0}}',
    ]
    try:
        for body in bodies:
            for route in ("call/view", "call/predict", "queue/join"):
                response = httpx.post(
                    f"{app_url}gradio_api/{route}",
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=30,
                )
                assert response.status_code == 400, (route, body, response.text)
                assert "not fetched from web addresses" in response.text
    finally:
        server.shutdown()
    assert fetched == []


def test_the_upload_limit_is_the_apps_to_the_byte(app_url):
    for size, accepted in ((common.photo.MAX_FILE_BYTES, True), (common.photo.MAX_FILE_BYTES + 1, False)):
        response = httpx.post(
            f"{app_url}gradio_api/upload", files={"files": ("x.jpg", b"\xff" * size, "image/jpeg")}, timeout=60
        )
        assert (response.status_code == 200) == accepted, (size, response.status_code, response.text)


def test_an_unknown_endpoint_is_named_in_a_404(app_url):
    response = httpx.post(f"{app_url}gradio_api/call/predcit", json={"data": []}, timeout=30)
    assert response.status_code == 404
    assert response.text.startswith("No endpoint named 'predcit': this app's are /augment, ")
    assert "/predict" in response.text
    assert httpx.get(f"{app_url}gradio_api/call/predcit/123", timeout=30).status_code == 404


def test_a_call_with_too_few_inputs_is_told_how_many(app_url):
    for endpoint, data, needed in (("predict", [], 2), ("predict", [None], 2), ("mistakes", ["cat"], 2)):
        response = httpx.post(f"{app_url}gradio_api/call/{endpoint}", json={"data": data}, timeout=30)
        assert response.status_code == 400, (endpoint, response.text)
        assert response.text.startswith(f"/{endpoint} takes {needed} inputs and got {len(data)}")
        assert " at 0x" not in response.text
    kind, text = call(app_url, "predict", [None, False])  # enough inputs: the app's own answer
    assert kind == "error" and "No image" in text


def test_every_output_is_named_and_a_listed_patch_size_is_accepted(client):
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    returns = {name: [r["label"] for r in e["returns"]] for name, e in info.items()}
    assert not [(n, r) for n, labels in returns.items() for r in labels if r.startswith("value_")], returns
    # The API lists the patch sizes as text; the text it lists is accepted.
    assert "16 patches" in client.predict(handle_file(CAT), "8", api_name="/patches")[2]
