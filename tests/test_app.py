"""The functions behind the app's tabs, the photo reader and the model loading; the
running app is tested in test_app_api.py and test_browser.py."""

import json
import re

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import app
from data import denormalize, train_transform
from vit_model import patchify

EXAMPLE = app.EXAMPLES_DIR / "cat_0003.jpg"
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture(scope="module")
def model():
    loaded, status = app.load_model(str(app.BUNDLED_WEIGHTS))
    assert loaded is not None, status
    return loaded


def pixels(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy().astype(int)


def near(color, expected, tol=12):
    return np.abs(np.asarray(color) - np.asarray(expected)).max() <= tol


# ---------------------------------------------------------------- reading photos

def test_a_cifar_image_is_read_unchanged():
    image = app.load_photo(EXAMPLE)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert np.array_equal(pixels(image), np.asarray(Image.open(EXAMPLE).convert("RGB")))


def test_examples_are_cifar_validation_images():
    names = sorted(p.name for p in app.EXAMPLES_DIR.glob("*.jpg"))
    assert len(names) == 30
    for cls in app.load_model(str(app.BUNDLED_WEIGHTS))[0].class_names:
        assert sum(n.startswith(f"{cls}_") for n in names) == 3
    assert all(Image.open(app.EXAMPLES_DIR / n).size == (32, 32) for n in names)


def test_center_crop_then_resize(tmp_path):
    wide = Image.new("RGB", (300, 100), RED)
    wide.paste(Image.new("RGB", (100, 100), BLUE), (100, 0))
    wide.save(tmp_path / "wide.png")
    image = pixels(app.load_photo(tmp_path / "wide.png"))
    # Only the middle square is left; bicubic lets a trace of red into the edge columns.
    assert near(image.reshape(-1, 3).min(0), BLUE, 25) and near(image.reshape(-1, 3).max(0), BLUE, 25)


def test_transparency_is_white(tmp_path):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (32, 32), BLUE + (255,)), (16, 16))
    rgba.save(tmp_path / "rgba.png")
    image = pixels(app.load_photo(tmp_path / "rgba.png"))
    assert near(image[0, 0], WHITE) and near(image[16, 16], BLUE)

    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(0, (0, 0, 20, 40))
    palette.save(tmp_path / "p.png", transparency=0)  # the left half: transparent black
    image = pixels(app.load_photo(tmp_path / "p.png"))
    assert near(image[16, 0], WHITE) and near(image[16, 31], RED)

    gray_alpha = Image.new("LA", (40, 40), (0, 0))
    gray_alpha.save(tmp_path / "la.png")
    assert near(pixels(app.load_photo(tmp_path / "la.png"))[5, 5], WHITE)


def test_grayscale_palette_and_cmyk_become_rgb(tmp_path):
    Image.new("L", (40, 40), 100).save(tmp_path / "gray.png")
    assert near(pixels(app.load_photo(tmp_path / "gray.png"))[7, 7], (100, 100, 100), 0)
    Image.new("RGB", (40, 40), RED).convert("P").save(tmp_path / "p.gif")
    assert near(pixels(app.load_photo(tmp_path / "p.gif"))[7, 7], RED)
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert near(pixels(app.load_photo(tmp_path / "cmyk.jpg"))[7, 7], RED, 20)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 64x32: left half red, right half blue. Orientation 6 says "rotate 90 degrees
    # clockwise to show": upright it is 32x64, red on top, blue below.
    stored = Image.new("RGB", (64, 32), RED)
    stored.paste(Image.new("RGB", (32, 32), BLUE), (32, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = pixels(app.load_photo(tmp_path / "rotated.jpg"))
    assert near(image[2, 2], RED, 30) and near(image[2, 29], RED, 30)
    assert near(image[29, 2], BLUE, 30) and near(image[29, 29], BLUE, 30)


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 40), c) for c in (RED, BLUE, WHITE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    assert near(pixels(app.load_photo(tmp_path / "anim.gif"))[5, 5], RED)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_jpeg_is_decoded_small(tmp_path, monkeypatch):
    Image.new("L", (10000, 10000), 90).save(tmp_path / "huge.jpg", quality=50)
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(self.size) or load(self))
    image = app.load_photo(tmp_path / "huge.jpg")
    assert near(pixels(image)[9, 9], (90, 90, 90), 3)
    assert set(decoded) == {(1250, 1250)}  # 1/8 scale: 1.5 MB instead of 100 MB


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("make, message", [
    (lambda p: Image.new("RGB", (1, 1)).save(p), "1x1 pixels; it needs at least 8x8"),
    (lambda p: Image.new("1", (10000, 10000)).save(p), "10000x10000 (100 megapixels), more than"),
    (lambda p: Image.new("1", (14000, 14000)).save(p), "too many pixels to decode safely"),
    (lambda p: p.write_text("hello"), "not an image Pillow can read"),
])
def test_bad_images_get_one_clear_message(tmp_path, make, message):
    path = tmp_path / "upload.png"
    make(path)
    with pytest.raises(gr.Error, match=re.escape(message)):
        app.load_photo(path)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(gr.Error, match="damaged or incomplete"):
        app.load_photo(tmp_path / "cut.jpg")


def test_no_image_is_a_clear_error():
    with pytest.raises(gr.Error, match="No image"):
        app.load_photo(None)


def test_input_component_explains_files_pillow_cannot_open(tmp_path):
    from gradio.data_classes import ImageData

    (tmp_path / "notes.png").write_text("not an image")
    component = app.photo_input()
    with pytest.raises(gr.Error, match="not an image"):
        component.preprocess(ImageData(path=str(tmp_path / "notes.png"), orig_name="notes.png"))
    assert component.preprocess(ImageData(path=str(EXAMPLE), orig_name="cat.jpg")) == str(EXAMPLE)


# ---------------------------------------------------------------- the tabs

def test_classify_normalizes_with_the_config_statistics(model):
    config = json.loads((app.BUNDLED_WEIGHTS / "config.json").read_text())
    image = app.load_photo(EXAMPLE)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((image[None].float() / 255 - mean) / std).softmax(-1)[0]
    probs = app.predict(model, str(EXAMPLE))
    assert list(probs) == config["class_names"]
    assert np.allclose(list(probs.values()), expected.numpy(), atol=1e-6)
    assert sum(probs.values()) == pytest.approx(1, abs=1e-5)


def test_augmented_views_are_the_training_transform_with_a_seed(model):
    image = app.load_photo(EXAMPLE)
    before = torch.get_rng_state()
    views = app.augmented_views(image, 5, 123, model.mean, model.std)
    assert torch.equal(torch.get_rng_state(), before)  # the server's generator is left alone
    torch.manual_seed(123)
    transform = train_transform(model.mean, model.std, 32)
    expected = [denormalize(transform(image), model.mean, model.std) for _ in range(5)]
    assert all(torch.equal(v, e) for v, e in zip(views, expected))
    assert not torch.equal(views[0], app.augmented_views(image, 1, 124, model.mean, model.std)[0])
    gallery = app.augment(model.mean, model.std, str(EXAMPLE), 5, 123)
    assert len(gallery) == 6 and gallery[0][1] == "input, 32x32"
    assert gallery[1][0].shape == (128, 128, 3)
    assert np.array_equal(gallery[1][0][::4, ::4], (views[0] * 255).round().byte().permute(1, 2, 0).numpy())


@pytest.mark.parametrize("patch_size", app.PATCH_SIZES)
def test_patch_grid_and_token_sequence(patch_size):
    image = app.load_photo(EXAMPLE)
    grid, sequence, caption = app.patches(str(EXAMPLE), patch_size)
    n = (32 // patch_size) ** 2
    assert f"{n} patches of {patch_size}x{patch_size}" in caption and f"{n + 1} tokens" in caption
    # Take the 4-pixel gaps out of the grid: what is left is the enlarged image.
    cell, step = patch_size * 8, patch_size * 8 + 4
    keep = [i for i in range(grid.shape[0]) if i % step < cell]
    assert np.array_equal(grid[keep][:, keep], app.enlarge(image))
    assert (grid[cell:cell + 4] == 255).all() if n > 1 else grid.shape == (256, 256, 3)
    # The sequence holds the patches in patchify's order, row by row.
    tokens = patchify(image[None], patch_size)[0].view(n, 3, patch_size, patch_size)
    columns = min(n, 2 * int(n ** 0.5))
    width = (sequence.shape[1] + 2) // columns - 2
    for k in sorted({0, min(1, n - 1), n - 1}):
        r, c = divmod(k, columns)
        top, left = r * (width + 2), c * (width + 2)
        assert np.array_equal(sequence[top, left], tokens[k, :, 0, 0].numpy())
        assert np.array_equal(sequence[top + width - 1, left + width - 1], tokens[k, :, -1, -1].numpy())


def test_patch_size_must_divide_32():
    with pytest.raises(gr.Error, match="Patch size 3 does not divide 32"):
        app.patches(str(EXAMPLE), 3)


def test_rollout_tab(model):
    heatmap, blocks, caption = app.rollout(model, str(EXAMPLE), "max", 0.5, "head 2")
    assert heatmap.shape == (256, 256, 3) and heatmap.dtype == np.uint8
    assert [c for _, c in blocks] == [f"block {b}" for b in range(1, 7)]
    best = max(app.predict(model, str(EXAMPLE)).items(), key=lambda kv: kv[1])[0]
    assert f"**{best}**" in caption
    assert not np.array_equal(heatmap, app.rollout(model, str(EXAMPLE), "min", 0.0, "mean")[0])


@pytest.mark.parametrize("args, message", [
    (("median", 0.0, "mean"), "Head fusion must be one of"),
    (("mean", 1.0, "mean"), "discard ratio must be at least 0 and below 1"),
    (("mean", 0.0, "head 9"), "heads 1 to 8"),
])
def test_rollout_controls_are_checked(model, args, message):
    with pytest.raises(gr.Error, match=message):
        app.rollout(model, str(EXAMPLE), *args)


def test_augment_count_and_seed_are_checked(model):
    with pytest.raises(gr.Error, match="1 to 32 augmented versions, not 0"):
        app.augment(model.mean, model.std, str(EXAMPLE), 0, 0)
    with pytest.raises(gr.Error, match="Enter a seed"):
        app.augment(model.mean, model.std, str(EXAMPLE), 3, None)


def test_without_a_model_nothing_is_predicted():
    for call in (lambda: app.predict(None, str(EXAMPLE)),
                 lambda: app.rollout(None, str(EXAMPLE), "mean", 0.0, "mean")):
        with pytest.raises(gr.Error, match="No trained model is loaded"):
            call()


# ---------------------------------------------------------------- loading the model

def test_model_source_cli_then_environment_then_bundled(monkeypatch):
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    assert app.resolve_model_source(None) == str(app.BUNDLED_WEIGHTS)
    monkeypatch.setenv(app.MODEL_ENV, "someone/vit")
    assert app.resolve_model_source(None) == "someone/vit"
    assert app.resolve_model_source("/models/mine") == "/models/mine"


def test_bundled_weights_load(model):
    loaded, status = app.load_model(str(app.BUNDLED_WEIGHTS))
    assert status == "Model: the bundled `weights/` folder."
    assert not loaded.training and loaded.image_size == 32


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_a_folder_without_weights_loads_no_model(tmp_path, folder):
    (tmp_path / "empty").mkdir()
    loaded, status = app.load_model(str(tmp_path / folder))
    assert loaded is None
    assert "No trained model is loaded" in status and "`weights/`" in status and app.MODEL_ENV in status


def test_unreachable_hub_falls_back_to_the_bundled_weights(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded, status = app.load_model("someone/no-such-vit")
    assert loaded is not None
    assert status.startswith("Model: the bundled `weights/` folder, because the app could not "
                             "load `someone/no-such-vit` from the Hub")
    monkeypatch.setattr(app, "BUNDLED_WEIGHTS", tmp_path / "nothing")
    loaded, status = app.load_model("someone/no-such-vit")
    assert loaded is None and "the bundled `nothing/` failed too" in status


def test_the_page_builds_without_a_model_and_names_its_endpoints():
    demo = app.build_demo(None, "**No trained model is loaded** (test).")
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"predict", "rollout", "augment", "patches"} <= names
