"""The running app through gradio_client: each named endpoint, bad inputs, concurrent
calls, and `python app.py` started without weights."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import free_port

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.jpg"))
CAT = str(REPO / "examples" / "cat_0003.jpg")
CLASSES = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_predict(client):
    result = client.predict(handle_file(CAT), api_name="/predict")
    assert result["label"] in CLASSES
    confidences = [c["confidence"] for c in result["confidences"]]
    assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True)
    assert 0 < sum(confidences) <= 1 + 1e-6


def test_requests_use_the_model_loaded_at_start_up(client, monkeypatch):
    import app

    def load_again(*args, **kwargs):
        raise AssertionError("a request loaded the model")

    monkeypatch.setattr(app.ViT, "from_pretrained", load_again)
    assert client.predict(handle_file(CAT), api_name="/predict")["label"] in CLASSES


def test_augment(client):
    gallery = client.predict(handle_file(CAT), 3, 7, api_name="/augment")
    assert [item["caption"] for item in gallery] == ["input, 32x32", "augmented 1",
                                                     "augmented 2", "augmented 3"]
    assert Image.open(gallery[1]["image"]).size == (128, 128)
    again = client.predict(handle_file(CAT), 3, 7, api_name="/augment")
    assert np.array_equal(np.asarray(Image.open(gallery[3]["image"])),
                          np.asarray(Image.open(again[3]["image"])))


def test_patches(client):
    grid, sequence, caption = client.predict(handle_file(CAT), 8, api_name="/patches")
    assert Image.open(grid).size == (4 * 64 + 3 * 4,) * 2
    assert Image.open(sequence).size[0] > Image.open(sequence).size[1]
    assert "16 patches of 8x8" in caption


def test_rollout(client):
    heatmap, blocks, caption = client.predict(handle_file(CAT), "max", 0.3, "head 1",
                                              api_name="/rollout")
    assert Image.open(heatmap).size == (256, 256)
    assert [b["caption"] for b in blocks] == [f"block {i}" for i in range(1, 7)]
    assert caption.startswith("Explaining the prediction **")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    Image.new("RGB", (1, 1)).save(root / "one.png")
    (root / "notes.txt").write_text("not an image")
    Image.new("1", (10000, 10000)).save(root / "huge.png")
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "full.jpg")
    (root / "cut.jpg").write_bytes((root / "full.jpg").read_bytes()[:6000])
    return root


@pytest.mark.parametrize("name, message", [
    (None, "No image: upload a photo or pick one of the examples first."),
    ("notes.txt", "That file is not an image Pillow can read"),
    ("one.png", "The image is 1x1 pixels; it needs at least 8x8"),
    ("huge.png", "The image is 10000x10000 (100 megapixels), more than the 25 megapixels"),
    ("cut.jpg", "The image file is damaged or incomplete"),
])
@pytest.mark.parametrize("endpoint", ["/predict", "/rollout"])
def test_bad_input_gets_a_readable_message(client, bad_files, name, message, endpoint):
    image = None if name is None else handle_file(str(bad_files / name))
    extra = ["mean", 0.0, "mean"] if endpoint == "/rollout" else []
    with pytest.raises(AppError) as err:
        client.predict(image, *extra, api_name=endpoint)
    assert str(err.value).startswith(message)
    assert "Traceback" not in str(err.value)


@pytest.mark.parametrize("args, message", [
    ((3, -1), "less than minimum value 0"),
    ((40, 0), "greater than maximum value 32"),
])
def test_out_of_range_controls_get_a_readable_message(client, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(CAT), *args, api_name="/augment")


def test_large_jpeg_and_animated_gif_are_accepted(client, tmp_path):
    Image.new("RGB", (10000, 10000), (200, 30, 30)).save(tmp_path / "huge.jpg", quality=30)
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    for name in ("huge.jpg", "anim.gif"):
        assert client.predict(handle_file(str(tmp_path / name)), api_name="/predict")["label"] in CLASSES


def test_32_concurrent_predictions_all_succeed(app_url):
    client = Client(app_url, verbose=False)
    jobs = [client.submit(handle_file(str(EXAMPLES[i % len(EXAMPLES)])), api_name="/predict")
            for i in range(32)]
    results = [job.result(timeout=120) for job in jobs]
    assert all(r["label"] in CLASSES for r in results)
    # Each job answered for its own image: the same file gives the same answer.
    assert results[0] == results[len(EXAMPLES)]


def test_app_without_weights_starts_and_says_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    port = free_port()
    env = {**os.environ, "VIT_CIFAR_MODEL": str(tmp_path / "empty"), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while True:
            try:
                client = Client(url, verbose=False)
                break
            except Exception:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the app did not start within 120 s"
                time.sleep(1)
        with pytest.raises(AppError, match="No trained model is loaded"):
            client.predict(handle_file(CAT), api_name="/predict")
        assert "16 patches" in client.predict(handle_file(CAT), 8, api_name="/patches")[2]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert f"No trained model is loaded (no usable weights in {tmp_path / 'empty'}" in output
