"""The app's endpoints called as functions, the page it builds, and the bundled sample;
the running app is tested in test_app_api.py and test_browser.py."""

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import app
import space.endpoints
import space.limits
import space.mistakes
import space.model_graph
import space.model_text
from common.model_folder import FIGURES, read_training
from data import denormalize, to_normalized, train_transform
from space.model_source import Loaded
from space.pictures import enlarge
from vit_model import ViT, patchify

EXAMPLE = str(app.EXAMPLES_DIR / "cat_0003.jpg")


@pytest.fixture(scope="module")
def loaded():
    result = app.load_model(str(app.BUNDLED_WEIGHTS))
    assert result.model is not None, result.status
    return result


@pytest.fixture(scope="module")
def ends(loaded, tmp_path_factory):
    return app.Endpoints(loaded, tmp_path_factory.mktemp("out"))


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------- the endpoints


def test_view_is_the_32x32_image_the_model_reads(ends):
    seen = png(ends.view(EXAMPLE))
    assert seen.shape == (32, 32, 3) and np.array_equal(seen, png(EXAMPLE))
    with pytest.raises(gr.Error, match="No image") as err:
        ends.view(None)
    assert err.value.visible is False  # a cleared upload shows no message on the page


def test_a_repeated_view_is_not_decoded_or_reported_twice(ends, monkeypatch, tmp_path):
    from types import SimpleNamespace

    decoded = []
    load = app.photo.load_photo
    monkeypatch.setattr(app.photo, "load_photo", lambda *a: decoded.append(a) or load(*a))
    session = SimpleNamespace(session_hash="tab-1")
    first = ends.view(EXAMPLE, session)
    assert ends.view(EXAMPLE, session) == first and len(decoded) == 1
    ends.view(EXAMPLE, SimpleNamespace(session_hash="tab-2"))  # another session
    assert len(decoded) == 2
    (tmp_path / "notes.png").write_text("not an image")
    bad = str(tmp_path / "notes.png")
    with pytest.raises(gr.Error, match="Unsupported format") as shown:
        app.answers(ends.view)(bad, session)
    with pytest.raises(gr.Error, match="Unsupported format") as again:
        app.answers(ends.view)(bad, session)
    assert shown.value.visible and not again.value.visible  # the page shows it once


def test_identical_views_at_the_same_time_decode_once(ends, monkeypatch):
    import threading
    import time
    from types import SimpleNamespace

    decoded = []
    load = app.photo.load_photo
    monkeypatch.setattr(app.photo, "load_photo", lambda *a: decoded.append(a) or time.sleep(0.5) or load(*a))
    session, results = SimpleNamespace(session_hash="tab-3"), []
    threads = [threading.Thread(target=lambda: results.append(ends.view(EXAMPLE, session))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(decoded) == 1 and len(results) == 2 and results[0] == results[1]


def test_predict_normalizes_with_the_config_statistics(ends):
    config = json.loads((app.BUNDLED_WEIGHTS / "config.json").read_text())
    image = torch.from_numpy(png(EXAMPLE).copy()).permute(2, 0, 1)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        # Calibrated: the logits over the temperature in the config, before the softmax.
        expected = (ends.model((image[None].float() / 255 - mean) / std) / config["temperature"]).softmax(-1)[0]
    probs = ends.predict(EXAMPLE)
    assert list(probs) == config["class_names"]
    assert np.allclose(list(probs.values()), expected.numpy(), atol=1e-6)
    # The same file as an upload, and inline as a data: URL, give the same answer.
    import base64
    import shutil

    upload = Path(gr.utils.get_upload_folder()) / "test-upload" / "cat.jpg"
    upload.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, upload)
    inline = "data:image/jpeg;base64," + base64.b64encode(open(EXAMPLE, "rb").read()).decode()
    assert ends.predict({"path": str(upload)}) == probs == ends.predict({"url": inline})
    with pytest.raises(app.photo.UserError, match="must be a file uploaded to this app"):
        ends.predict({"path": EXAMPLE})  # a request may name no file outside the uploads


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror(ends):
    image = torch.from_numpy(png(EXAMPLE).copy()).permute(2, 0, 1)[None]
    mirror = torch.from_numpy(png(EXAMPLE)[:, ::-1].copy()).permute(2, 0, 1)[None]
    x, x_mirror = (to_normalized(i, ends.model.mean, ends.model.std) for i in (image, mirror))
    with torch.no_grad():
        expected = ((ends.model(x) + ends.model(x_mirror)) / 2 / ends.model.temperature).softmax(-1)[0]
    probs = ends.predict(EXAMPLE, True)
    assert np.allclose(list(probs.values()), expected.numpy(), atol=1e-6)
    assert probs != ends.predict(EXAMPLE, False)
    with pytest.raises(app.photo.UserError, match="Flip TTA must be true or false, not 'yes'"):
        ends.predict(EXAMPLE, "yes")


def test_augment_is_the_training_transform_with_a_seed(ends):
    image = torch.from_numpy(png(EXAMPLE).copy()).permute(2, 0, 1)
    before = torch.get_rng_state()
    gallery = ends.augment(EXAMPLE, 5, 123)
    assert torch.equal(torch.get_rng_state(), before)  # the server's generator is left alone
    torch.manual_seed(123)
    transform = train_transform(ends.mean, ends.std, 32)
    expected = [denormalize(transform(image), ends.mean, ends.std) for _ in range(5)]
    assert len(gallery) == 6 and gallery[0][1] == "input, 32x32"
    first = png(gallery[1][0])
    assert first.shape == (128, 128, 3)
    assert np.array_equal(first[::4, ::4], (expected[0] * 255).round().byte().permute(1, 2, 0).numpy())
    assert not np.array_equal(first, png(ends.augment(EXAMPLE, 1, 124)[1][0]))


@pytest.mark.parametrize("patch_size", [1, 2, 4, 8, 16, 32])
def test_patch_grid_and_token_sequence(ends, patch_size):
    image = torch.from_numpy(png(EXAMPLE).copy()).permute(2, 0, 1)
    grid, sequence, caption = ends.patches(EXAMPLE, patch_size)
    grid, sequence = png(grid), png(sequence)
    n = (32 // patch_size) ** 2
    assert f"{n} patches of {patch_size}x{patch_size}" in caption and f"{n + 1} tokens" in caption
    # Take the 4-pixel gaps out of the grid: what is left is the enlarged image.
    cell, step = patch_size * 8, patch_size * 8 + 4
    keep = [i for i in range(grid.shape[0]) if i % step < cell]
    assert np.array_equal(grid[keep][:, keep], enlarge(image))
    assert (grid[cell : cell + 4] == 255).all() if n > 1 else grid.shape == (256, 256, 3)
    # The sequence holds the patches in patchify's order, row by row.
    tokens = patchify(image[None], patch_size)[0].view(n, 3, patch_size, patch_size)
    columns = min(n, 2 * int(n**0.5))
    width = (sequence.shape[1] + 2) // columns - 2
    for k in sorted({0, min(1, n - 1), n - 1}):
        r, c = divmod(k, columns)
        top, left = r * (width + 2), c * (width + 2)
        assert np.array_equal(sequence[top, left], tokens[k, :, 0, 0].numpy())
        assert np.array_equal(sequence[top + width - 1, left + width - 1], tokens[k, :, -1, -1].numpy())


def test_rollout_shows_the_input_beside_a_readable_overlay_and_its_scale(ends):
    figure, blocks, caption = ends.rollout(EXAMPLE, "max", 0.5, "head 2")
    figure = png(figure)
    assert figure.shape == (256 + 8 + 14, 2 * 256 + 8, 3)
    assert np.array_equal(figure[:256, :256], enlarge(torch.from_numpy(png(EXAMPLE).copy()).permute(2, 0, 1)))
    scale = figure[-14:, 264:].astype(int)
    assert near_grey(scale[7, 0]) and scale[7, -1].sum() > scale[7, 0].sum() + 150  # clear -> bright
    # Where the map is low the image shows through: the overlay keeps most of its pixels.
    overlay, picture = figure[:256, 264:].astype(int), figure[:256, :256].astype(int)
    assert (np.abs(overlay - picture).max(-1) < 40).mean() > 0.2
    assert [c for _, c in blocks] == [f"block {b}" for b in range(1, 7)]
    best = max(ends.predict(EXAMPLE).items(), key=lambda kv: kv[1])[0]
    assert f"**{best}**" in caption
    assert not np.array_equal(figure, png(ends.rollout(EXAMPLE, "min", 0.0, "mean")[0]))


def near_grey(pixel):
    return np.abs(np.asarray(pixel) - 128).max() <= 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e: e.rollout(EXAMPLE, "median", 0.0, "mean"), "Head fusion must be one of mean, max, min"),
        (lambda e: e.rollout(EXAMPLE, "mean", 1.0, "mean"), "discard ratio must be at least 0 and below 1"),
        (lambda e: e.rollout(EXAMPLE, "mean", "x", "mean"), "discard ratio must be at least 0 and below 1"),
        (lambda e: e.rollout(EXAMPLE, "mean", 0.0, "head 9"), "Block head must be one of mean, max, min, head 1"),
        (lambda e: e.augment(EXAMPLE, 0, 0), "number of augmented versions must be a whole number from 1 to 32, not 0"),
        (lambda e: e.augment(EXAMPLE, "8", 0), "from 1 to 32, not '8'"),
        (lambda e: e.augment(EXAMPLE, 3, None), "Enter a seed"),
        (lambda e: e.augment(EXAMPLE, 3, -1), "The seed must be a whole number from 0"),
        (lambda e: e.patches(EXAMPLE, 3), "Patch size 3 does not divide 32"),
        (
            lambda e: e.patches(EXAMPLE, "eight"),
            "The patch size must be a number, one of 1, 2, 4, 8, 16, 32, not 'eight'",
        ),
        (lambda e: e.patches(EXAMPLE, "3"), "Patch size 3 does not divide 32"),
        (lambda e: e.patches(EXAMPLE, True), "The patch size must be a number, one of 1, 2, 4, 8, 16, 32, not True"),
        (lambda e: e.predict(12), "The image must be a file uploaded to this app or a base64 data: URL"),
        (lambda e: e.mistakes_for("cat", "lion"), "The predicted class must be one of any, airplane"),
    ],
)
def test_every_argument_is_checked_with_a_message(ends, call, message):
    with pytest.raises(gr.Error, match=message):
        app.answers(call)(ends)


def test_without_a_model_nothing_is_predicted(tmp_path):
    ends = app.Endpoints(Loaded(None, "none"), tmp_path)
    for call in (
        lambda: ends.predict(EXAMPLE),
        lambda: ends.rollout(EXAMPLE, "mean", 0.0, "mean"),
        lambda: ends.mistakes_for("any", "any"),
    ):
        with pytest.raises(gr.Error, match="No trained model is loaded"):
            app.answers(call)()
    assert len(ends.augment(EXAMPLE, 2, 0)) == 3  # the model-free tabs still work


def test_mistakes_are_wrong_filtered_and_explained(ends):
    everything, summary = ends.mistakes_for("any", "any")
    found = ends.mistakes
    assert found.wrong and all(int(found.probs[i].argmax()) != found.sample.labels[i] for i in found.wrong)
    assert f"**{len(found.wrong)} of the 500**" in summary and "split seed 0" in summary
    assert len(everything) == min(space.endpoints.MISTAKES_SHOWN, len(found.wrong))
    cats, _ = ends.mistakes_for("cat", "any")
    assert cats and all(caption.startswith("cat → ") for _, caption in cats)
    as_dog, _ = ends.mistakes_for("any", "dog")
    assert as_dog and all(caption.split(" → ")[1].startswith("dog ") for _, caption in as_dog)
    assert "may have trained on some" not in summary  # the bundled weights' own split
    top3 = everything[0][1].split(" → ")[1].split(", ")
    assert len(top3) == 3 and png(everything[0][0]).shape == (96, 2 * 96 + 4, 3)


def test_a_filter_is_drawn_once_and_again_when_its_pictures_expire(ends, monkeypatch):
    drawn = []
    draw = space.endpoints.picture
    monkeypatch.setattr(space.endpoints, "picture", lambda *a: drawn.append(a) or draw(*a))
    first = ends.mistakes_for("bird", "any")
    assert drawn and ends.mistakes_for("bird", "any") == first
    count = len(drawn)
    assert count == len(first[0])  # the second page load drew nothing
    Path(first[0][0][0]).unlink()  # as the cache deletes an expired picture
    again = ends.mistakes_for("bird", "any")
    assert len(drawn) == 2 * count and all(Path(path).is_file() for path, _ in again[0])
    assert [c for _, c in again[0]] == [c for _, c in first[0]]


def small_model(size: int) -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=size, patch_size=size // 4, dim=16, depth=1, heads=2, mlp_dim=16).eval()


@pytest.mark.parametrize("size", [40, 64])
def test_mistakes_of_a_model_of_another_input_size(tmp_path, size):
    ends = app.Endpoints(Loaded(small_model(size), "status"), tmp_path)
    gallery, summary = ends.mistakes_for("any", "any")
    assert gallery and "sample images wrong" in summary
    shown = (96 // size) * size  # enlarged by a whole factor, as crisp as the 32x32 ones
    picture = png(gallery[0][0])
    assert picture.shape == (shown, 2 * shown + 4, 3)
    image = ends.mistakes.sample.images[ends.mistakes.wrong[0]]
    assert np.array_equal(picture[:, :shown], enlarge(image, 96))


def test_find_mistakes_holds_a_bounded_batch_of_attention_maps(monkeypatch):
    model, sample = small_model(32), space.mistakes.load_sample()
    sample = space.mistakes.Sample(sample.images[:10], sample.labels[:10], sample.class_names, "ten")
    whole = space.mistakes.find_mistakes(model, sample)
    batches, rollout = [], space.mistakes.model_rollout
    monkeypatch.setattr(space.mistakes, "model_rollout", lambda m, x: batches.append(len(x)) or rollout(m, x))
    # one image: 1 block x 2 heads x 17^2 tokens x 4 bytes
    monkeypatch.setattr(space.mistakes, "BATCH_ATTENTION_BYTES", 3 * 2 * 17**2 * 4)
    bounded = space.mistakes.find_mistakes(model, sample)
    assert batches == [3, 3, 3, 1]
    assert torch.allclose(bounded.probs, whole.probs, atol=1e-6) and bounded.wrong == whole.wrong


def test_the_server_finds_the_mistakes_at_start_up_in_the_background(tmp_path, monkeypatch):
    import threading

    found = threading.Event()
    monkeypatch.setattr(space.endpoints, "find_mistakes", lambda *a: found.set() or threading.current_thread())
    app.build_demo(Loaded(small_model(32), "status"), tmp_path)
    assert not found.wait(0.5)  # only when asked: tests and tools build pages too
    app.build_demo(Loaded(small_model(32), "status"), tmp_path, warm=True)
    assert found.wait(30)


def test_an_expired_picture_is_named_as_such(ends):
    gone = Path(gr.utils.get_upload_folder()) / "test-expired" / "gone.png"
    with pytest.raises(gr.Error, match="This picture has expired") as err:
        app.answers(ends.predict)({"path": str(gone), "meta": {"_type": "gradio.FileData"}})
    assert str(gone.parent) not in str(err.value)


def test_a_model_from_another_split_is_warned_about(loaded):
    assert space.mistakes.sample_caveat(loaded.training) == ""
    for training in ({**loaded.training, "split_seed": 1}, {**loaded.training, "val_images": 4000}, {}):
        assert "may have trained on some of these images" in space.mistakes.sample_caveat(training)


def test_identical_pictures_are_written_whole_and_shared(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    first, second = space.limits.save_png(pixels, tmp_path), space.limits.save_png(pixels, tmp_path)
    assert first == second and np.array_equal(png(first), pixels)
    other = space.limits.save_png(pixels[::-1].copy(), tmp_path)
    # No temporary file is left, and no folder: the cache deletes files, never folders.
    assert sorted(tmp_path.iterdir()) == sorted([Path(first), Path(other)])


# ---------------------------------------------------------------- the bundled sample


def test_the_bundled_sample_is_50_validation_images_per_class(tmp_path):
    import data

    sample = space.mistakes.load_sample()
    assert sample.images.shape == (500, 3, 32, 32) and sample.labels.bincount().tolist() == [50] * 10
    with np.load(space.mistakes.SAMPLE, allow_pickle=False) as saved:
        indices = torch.from_numpy(saved["indices"])
    _, val = data.split_indices(50_000, space.mistakes.VAL_SIZE, space.mistakes.SPLIT_SEED)
    assert torch.isin(indices, val).all() and len(indices.unique()) == 500
    np.savez(
        tmp_path / "bad.npz",
        images=np.zeros((2, 32, 32), np.uint8),
        labels=np.zeros(2),
        class_names=np.array(["a"]),
        description=np.array("x"),
    )
    with pytest.raises(ValueError, match="does not hold uint8 RGB images"):
        space.mistakes.load_sample(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    for name, message in [
        ("absent.npz", "is missing"),
        ("short.npz", "lacks the arrays labels, class_names, description"),
        ("broken.npz", "is not a readable .npz file"),
    ]:
        with pytest.raises(ValueError, match=message):
            space.mistakes.load_sample(tmp_path / name)


def test_examples_are_cifar_validation_images(loaded):
    names = sorted(p.name for p in app.EXAMPLES_DIR.glob("*.jpg"))
    assert len(names) == 30
    for cls in loaded.model.class_names:
        assert sum(n.startswith(f"{cls}_") for n in names) == 3
    assert all(Image.open(app.EXAMPLES_DIR / n).size == (32, 32) for n in names)


# ---------------------------------------------------------------- the page


def test_the_header_names_classes_input_accuracy_and_recipe(loaded):
    line = space.model_text.header(loaded)
    assert "10 classes" in line and "airplane, automobile" in line and "32x32" in line
    record = json.loads((app.BUNDLED_WEIGHTS / "training.json").read_text())
    assert f"{100 * record['val_acc']:.1f}%" in line and record["recipe"] in line
    table = space.model_text.results_markdown(loaded)
    assert f"| validation accuracy | {100 * record['val_acc']:.2f}% |" in table
    assert f"{record['class_names'][0]} {100 * record['per_class_acc'][0]:.1f}%" in table
    unknown = Loaded(loaded.model, "status", None, {})
    assert "Validation accuracy: **unknown**; training recipe: **unknown**" in space.model_text.header(unknown)
    assert space.model_text.results_markdown(unknown) == ""


def test_a_training_record_of_the_wrong_kind_shows_as_unknown(loaded, tmp_path):
    (tmp_path / "training.json").write_text(
        '{"recipe": 5, "epochs": 3, "training_minutes": NaN, "val_images": Infinity, "val_acc": 0.5}'
    )
    record = Loaded(loaded.model, "status", tmp_path, read_training(tmp_path))
    line, table = space.model_text.header(record), space.model_text.results_markdown(record)
    assert "Validation accuracy: **50.0%**; training recipe: **unknown, 3 epochs**" in line
    assert "| epochs | 3 |" in table and "training time" not in table
    assert not any(word in line + table for word in ("nan", "inf", "None"))
    app.build_demo(record, tmp_path)


def test_training_record_text_is_shown_literally_on_one_table_row(loaded, tmp_path):
    (tmp_path / "training.json").write_text(
        json.dumps({"recipe": "a|b", "recipe_description": "**bold** <b>html</b>\nsecond | row", "epochs": 3})
    )
    record = Loaded(loaded.model, "status", tmp_path, read_training(tmp_path))
    table, line = space.model_text.results_markdown(record), space.model_text.header(record)
    settings = next(row for row in table.splitlines() if row.startswith("| settings |"))
    assert settings == r"| settings | \*\*bold\*\* \<b\>html\</b\> second \| row |"
    assert r"training recipe: **a\|b, 3 epochs**" in line
    assert len(table.splitlines()) == 5  # header, rule, recipe, settings, epochs


def test_a_fine_tuned_model_shows_what_it_started_from_and_its_teacher(loaded, tmp_path):
    (tmp_path / "training.json").write_text(
        json.dumps(
            {
                "recipe": "budget",
                "epochs": 18,
                "epochs_before": 150,
                "val_acc": 0.83,
                "started_from": "the weights of a budget model",
                "distilled_from": "a CNN",
            }
        )
    )
    record = Loaded(loaded.model, "status", tmp_path, read_training(tmp_path))
    assert "training recipe: **budget, 150 + 18 epochs**" in space.model_text.header(record)
    table = space.model_text.results_markdown(record)
    assert "| started from | the weights of a budget model |" in table and "| teacher | a CNN |" in table


def test_the_results_tab_shows_each_figure_the_model_folder_has(loaded, tmp_path):
    def shown(folder):
        demo = app.build_demo(Loaded(loaded.model, "status", folder, {}), tmp_path / "out")
        return [
            c["props"]["label"]
            for c in demo.config["components"]
            if c["type"] == "image" and c["props"].get("label") in FIGURES.values()
        ]

    assert shown(tmp_path) == []
    for name in ("per_class_accuracy.png", "time_to_accuracy.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    assert shown(tmp_path) == ["Time to accuracy", "Per-class accuracy"]


ENDPOINTS = (
    "view",
    "predict",
    "compare",
    "classify",
    "rollout",
    "cam",
    "class_map",
    "cnn_class_map",
    "own",
    "own_map",
    "augment",
    "patches",
    "mistakes",
    "cnn_mistakes",
    "comparison",
)


def test_the_page_names_its_endpoints_and_queues_them_all(loaded):
    demo = app.build_demo(loaded, cnn=app.load_cnn(str(app.BUNDLED_WEIGHTS / "cnn")))
    named = {d["api_name"]: d for d in demo.config["dependencies"] if d.get("api_name")}
    assert set(ENDPOINTS) <= set(named)
    backend = [d for d in demo.config["dependencies"] if d.get("backend_fn")]
    assert all(d["queue"] is not False for d in backend if d["api_name"] != "load_example")
    public = {d["api_name"] for d in backend if d.get("api_visibility", "public") == "public"}
    assert public == set(ENDPOINTS)
    assert demo.api_open is False


def test_a_changed_control_re_answers_only_its_own_tab(loaded):
    demo = app.build_demo(loaded, cnn=app.load_cnn(str(app.BUNDLED_WEIGHTS / "cnn")))
    events = [f for f in demo.fns.values() if f.fn is not None]
    by_trigger = {}
    for f in events:
        for block_id, event in f.targets:
            by_trigger.setdefault((block_id, event), []).append(f.fn.__name__)
    view = next(f for f in events if f.api_name == "view")
    assert by_trigger[view.targets[0]] == ["view"]  # only a new image is decoded again
    named = {f.api_name: f for f in events if f.api_visibility != "private"}
    # Where each answer goes, by the label of its first output.
    shows = {
        "predict": "ViT: top 5 classes",
        "compare": "Verdict",
        "classify": "/classify",
        "cam": "CNN: class activation map",
        "class_map": "Gradient rollout",
        "cnn_class_map": "CNN: the class's activation map",
        "rollout": "Attention rollout",
        "augment": "Augmented versions",
        "patches": "Patches",
    }
    for name, label in shows.items():  # a shown picture goes to every tab's endpoint
        f = named[name]
        assert f.trigger_after == view._id and f.trigger_only_on_success
        assert f.inputs[0] is view.outputs[0] and f.outputs[0].label == label
    assert named["augment"].outputs[0].elem_id == "views"
    assert [o.label for o in named["patches"].outputs[:2]] == ["Patches", "Token sequence"]
    # The private events that re-answer a tab when one of its controls changes (the others
    # clear the answers, or train and apply a visitor's own classifier).
    others = {"no_answers", "train_own", "own_answer", "own_map", "shown_for"}
    controls = [f for f in events if f.api_visibility == "private" and f.fn.__name__ not in others]
    assert sorted(f.fn.__name__ for f in controls) == sorted(n for n in shows if n != "cam")  # the map has none
    for f in controls:  # a control's change runs the endpoints that read it, nothing else
        for block_id, event in f.targets:
            readers = {name for name, g in named.items() if block_id in {c._id for c in g.inputs[1:]}}
            assert sorted(by_trigger[block_id, event]) == sorted(readers)
        own = named[f.fn.__name__]
        assert f.inputs == own.inputs and f.outputs == own.outputs  # the same answer, in place
        assert {t[0] for t in f.targets} == {c._id for c in own.inputs[1:]}  # its own controls


def test_a_control_changed_before_any_image_answers_nothing_silently():
    calls = []
    endpoint = app.once_shown(lambda seen, flip: calls.append(seen))
    with pytest.raises(gr.Error) as err:
        endpoint(None, True)
    assert err.value.visible is False and calls == []
    endpoint("seen.png", True)
    assert calls == ["seen.png"]


def test_the_page_builds_without_a_model():
    demo = app.build_demo(Loaded(None, "**No trained model is loaded** (test)."))
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert set(ENDPOINTS) - {"comparison", "cnn_mistakes"} <= names  # without a CNN, nothing to compare


@pytest.mark.skipif(
    space.model_graph.dot_missing() is not None,
    reason="graphviz's `dot` is missing (apt-get install graphviz, as .ci/run does)",
)
def test_the_graph_is_drawn_from_the_real_module(loaded, tmp_path):
    import space.model_graph

    path = space.model_graph.draw(loaded.model, 32, tmp_path / "graph.png")
    width, height = Image.open(path).size
    assert height > 3 * width  # top to bottom, one node per module
    table = space.model_graph.layer_table(loaded.model, 32)
    assert f"{sum(p.numel() for p in loaded.model.parameters()):,}" in table
    assert "MultiheadAttention" in table and "[1, 65, 256]" in table


def test_without_graphviz_the_model_tab_says_why(loaded, monkeypatch):

    monkeypatch.setattr(space.model_graph, "dot_missing", lambda: "graphviz's `dot` is not installed")
    demo = app.build_demo(loaded)
    texts = [c.get("props", {}).get("value") for c in demo.config["components"]]
    assert any("cannot be drawn here: graphviz's `dot` is not installed" in str(t) for t in texts)


@pytest.mark.parametrize(
    "folder, message",
    [
        ("missing", r"error: no usable weights in `.*missing`: .*missing does not exist"),
        ("run", r"it looks like a training run's folder; did you mean .*run/export\?"),
    ],
)
def test_a_folder_asked_for_by_name_that_cannot_load_stops_the_app_with_one_message(
    tmp_path, monkeypatch, folder, message
):
    (tmp_path / "run" / "export").mkdir(parents=True)
    (tmp_path / "run" / "export" / "config.json").write_text("{}")
    monkeypatch.setattr("sys.argv", ["app.py", "--model", str(tmp_path / folder)])
    monkeypatch.setattr(app, "serve", lambda *a, **k: pytest.fail("a server started without its model"))
    with pytest.raises(SystemExit, match=message):
        app.main()


def test_the_page_shows_both_models_and_their_verdict(loaded):
    from cnn_model import CNN

    cnn = CNN(widths=[8, 8, 8], mean=loaded.model.mean, std=loaded.model.std)
    demo = app.build_demo(loaded, cnn=cnn.eval())
    ends = next(f.fn for f in demo.fns.values() if f.api_name == "classify").__wrapped__.__self__
    cat = str(next(p for p in app.EXAMPLES_DIR.glob("*.jpg")))
    both = ends.classify(cat)
    assert set(both) == {"vit", "cnn"} and both["vit"]["confidences"] == ends.predict(cat)
    verdict, cnn_top = ends.compare(cat)
    assert verdict.splitlines()[0].startswith("ViT: ") and verdict.splitlines()[1].startswith("CNN: ")
    assert cnn_top == both["cnn"]["confidences"]
    picture, caption = ends.cam(cat)
    assert Image.open(picture).size[0] > 2 * 256 and caption.startswith(f"Explaining **{both['cnn']['label']}**")
    alone = app.build_demo(loaded)  # without a CNN: the ViT alone
    ends_alone = next(f.fn for f in alone.fns.values() if f.api_name == "classify").__wrapped__.__self__
    assert set(ends_alone.classify(cat)) == {"vit"} and ends_alone.compare(cat)[1] is None
    assert not ends.pairs  # a CNN whose training.json does not show it held out the sample
    assert ends_alone.cam(cat) == (None, "No CNN is loaded beside the ViT, so there is no class activation map.")


def test_the_class_map_explains_the_class_asked_for(ends):
    top, top_caption = ends.class_map(EXAMPLE, space.endpoints.TOP_CLASS)
    answer = max(ends.predict(EXAMPLE).items(), key=lambda kv: kv[1])[0]
    assert top_caption.startswith(f"Why **{answer}** (the ViT's top class)?")
    cat, cat_caption = ends.class_map(EXAMPLE, "cat")
    dog, _ = ends.class_map(EXAMPLE, "dog")
    assert cat_caption.startswith("Why **cat** (the class you picked)?")
    assert not np.array_equal(png(cat), png(dog))  # rollout would draw the same map twice
    with pytest.raises(app.photo.UserError, match="The class must be one of its top class, airplane"):
        ends.class_map(EXAMPLE, "unicorn")


def test_the_comparison_counts_each_model_and_where_they_part():
    from space.comparison import comparison_markdown

    labels = torch.tensor([0, 0, 1, 1])
    vit, cnn = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1])
    text = comparison_markdown(vit, cnn, labels, ["cat", "dog"])
    assert text.startswith("On these 4 images the **ViT is right on 50.0%** and the **CNN on 100.0%**; they give")
    assert "same answer on 50.0%. Both right: 2; only the ViT: 0; only the CNN: 2; both wrong: 0" in text
    assert "| cat | 2 | 50.0% | 100.0% | 50.0% |" in text and "| dog | 2 | 50.0% | 100.0% | 50.0% |" in text
    assert "| cat | dog | cat | 1 |" in text and "| dog | cat | dog | 1 |" in text


def test_the_cnns_mistakes_come_with_its_class_activation_maps(loaded, tmp_path):
    ends = space.endpoints.Endpoints(loaded, tmp_path, app.load_cnn(str(app.BUNDLED_WEIGHTS / "cnn")))
    gallery, summary = ends.cnn_mistakes_for("cat", "any")
    assert summary.startswith("The CNN gets **48 of the 500** sample images wrong (90.4% right)")
    assert "its class activation map" in summary
    vit_gallery, vit_summary = ends.mistakes_for("cat", "any")  # the ViT's, as before
    assert vit_summary.startswith("The ViT gets **") and "its rollout" in vit_summary
    assert gallery and all(caption.startswith("cat → ") for _, caption in gallery)
    assert [c for _, c in gallery] != [c for _, c in vit_gallery]
    with pytest.raises(app.photo.UserError, match="No CNN is loaded beside the ViT"):
        space.endpoints.Endpoints(loaded, tmp_path).cnn_mistakes_for("any", "any")


def test_the_answers_of_one_shown_picture_are_computed_once(loaded, tmp_path, monkeypatch):
    ends = space.endpoints.Endpoints(loaded, tmp_path, app.load_cnn(str(app.BUNDLED_WEIGHTS / "cnn")))
    calls = []
    real = space.endpoints.tta_logits
    monkeypatch.setattr(space.endpoints, "tta_logits", lambda *a: calls.append(a[2]) or real(*a))
    probs = ends.predict(EXAMPLE)
    both = ends.classify(EXAMPLE)
    ends.compare(EXAMPLE)
    assert calls == [False, False]  # the ViT and the CNN, once each, for three endpoints
    assert both["vit"]["confidences"] == probs
    ends.predict(EXAMPLE, True)  # the mirror image is another answer
    assert calls == [False, False, True, True]


def test_the_two_models_are_judged_together_on_a_threshold_fitted_on_the_sample(loaded, tmp_path):
    from calibration import logits_and_features, ood_score
    from common.model_folder import read_training

    folder = app.BUNDLED_WEIGHTS / "cnn"
    ends = space.endpoints.Endpoints(loaded, tmp_path, app.load_cnn(str(folder)), read_training(folder))
    assert ends.pairs and ends.pair is ends.pair  # fitted once
    sample = ends.sample.images
    scores = ends.pair.score(
        *(ood_score(logits_and_features(m, sample)[0], "energy", m.temperature) for m in (ends.model, ends.cnn))
    )
    assert float((scores >= ends.pair.threshold).double().mean()) == pytest.approx(0.95, abs=0.003)
    said = ends.classify(EXAMPLE)
    assert said["both"]["score"] == pytest.approx(
        float(ends.pair.score(torch.tensor(said["vit"]["score"]), torch.tensor(said["cnn"]["score"]))), rel=1e-5
    )
    assert said["both"]["known"] == (said["both"]["score"] >= ends.pair.threshold)
    unmatched = space.endpoints.Endpoints(loaded, tmp_path, app.load_cnn(str(folder)), {"split_seed": 7})
    assert not unmatched.pairs and unmatched.pair is None and "both" not in unmatched.classify(EXAMPLE)


def test_the_cnns_map_explains_the_class_asked_for(loaded, tmp_path):
    from cnn_model import CNN
    from data import to_normalized

    folder = app.BUNDLED_WEIGHTS / "cnn"
    ends = space.endpoints.Endpoints(loaded, tmp_path, app.load_cnn(str(folder)))
    top_label = ends.classify(EXAMPLE)["cnn"]["label"]
    picture, caption = ends.cnn_class_map(EXAMPLE, space.endpoints.TOP_CLASS)
    assert caption.startswith(f"Explaining **{top_label}**, the CNN's top class")
    cam_picture, cam_caption = ends.cam(EXAMPLE)  # /cam: the same map
    assert cam_caption == caption and np.array_equal(png(cam_picture), png(picture))
    other = next(n for n in ends.cnn.class_names if n != top_label)
    other_picture, other_caption = ends.cnn_class_map(EXAMPLE, other)
    assert other_caption.startswith(f"Explaining **{other}**, the class you picked for the CNN: where its")
    assert not np.array_equal(png(picture), png(other_picture))
    # The picture is the class's own votes: those of `other`, scaled to their maximum.
    x = to_normalized(ends.read(EXAMPLE)[None], ends.cnn.mean, ends.cnn.std)
    votes = CNN.cam(ends.cnn, x, ends.cnn.class_names.index(other))[0]
    assert ("no cell votes" in other_caption) == bool(votes.max() <= 0)
    with pytest.raises(app.photo.UserError, match="The CNN's class must be one of"):
        ends.cnn_class_map(EXAMPLE, "unicorn")
    alone = space.endpoints.Endpoints(loaded, tmp_path)
    assert alone.cnn_class_map(EXAMPLE, "cat") == (
        None,
        "No CNN is loaded beside the ViT, so there is no class activation map.",
    )
