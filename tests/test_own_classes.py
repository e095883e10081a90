"""space/own_classes.py and the "Your own classes" tab: names, limits, a probe that learns
the visitor's classes from the ViT's or the CNN's frozen features, kept in the visitor's
page state, and the map that explains its answer."""

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import app
from cnn_model import CNN
from common.model_folder import load_folder
from common.photo import UserError
from data import to_normalized
from rollout import gradient_rollout, scale_to_unit
from space import own_classes
from space.endpoints import Endpoints
from space.model_source import Loaded
from space.pictures import rollout_figure

BUNDLED = Path(__file__).resolve().parent.parent / "weights"
RED, BLUE = (200, 40, 40), (40, 40, 200)


def photos(tint: tuple[int, int, int], n: int, seed: int) -> torch.Tensor:
    """n uint8 32x32 images of one colour with noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(-40, 41, (n, 3, 32, 32), generator=g)
    return (torch.tensor(tint).view(1, 3, 1, 1) + noise).clamp(0, 255).to(torch.uint8)


def saved(folder: Path, name: str, images: torch.Tensor) -> list[str]:
    """The images as PNG files, as a visitor drops them."""
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{name}{i}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def vit():
    return load_folder(BUNDLED)


@pytest.fixture(scope="module")
def cnn():
    return load_folder(BUNDLED / "cnn", CNN)


@pytest.mark.parametrize(
    "text, message",
    [
        ("ant", "Name 2 to 5 classes, separated by commas (got 1)"),
        ("a, b, c, d, e, f", "Name 2 to 5 classes, separated by commas (got 6)"),
        ("ant, ant", "two are the same"),
        ("ant, " + "b" * 41, "at most 40 characters"),
        (None, "(got 0)"),
    ],
)
def test_class_names_that_cannot_be_used_are_named(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        own_classes.class_names(text)


def test_class_names_are_trimmed():
    assert own_classes.class_names(" ant ,bee,, ") == ["ant", "bee"]


def test_each_class_needs_5_to_50_photos():
    with pytest.raises(UserError, match="Class 'bee' has 4 photos: give each class 5 to 50"):
        own_classes.check_counts(["ant", "bee"], [5, 4])
    with pytest.raises(UserError, match="Class 'ant' has 51 photos"):
        own_classes.check_counts(["ant", "bee"], [51, 5])


def test_the_probe_learns_the_visitors_classes_from_frozen_features():
    model = load_folder(BUNDLED)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    red, blue = photos((200, 40, 40), 8, 0), photos((40, 40, 200), 8, 1)
    classifier = own_classes.fit(model, ["red", "blue"], [red, blue])
    assert classifier.photos == 16 and classifier.train_accuracy == 1.0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the ViT is frozen
    new_red, new_blue = photos((210, 30, 50), 1, 2)[0], photos((30, 50, 210), 1, 3)[0]
    assert own_classes.answer(model, classifier, new_red)["red"] > 0.5
    assert own_classes.answer(model, classifier, new_blue)["blue"] > 0.5


def test_the_tab_trains_from_uploads_into_the_visitors_page_state(tmp_path):
    loaded = Loaded(load_folder(BUNDLED), "status")
    ends = Endpoints(loaded, tmp_path / "out")
    groups = [saved(tmp_path, "red", photos(RED, 6, 0)), saved(tmp_path, "blue", photos(BLUE, 6, 1))]
    classifier, status = ends.train_own("red, blue", "ViT", *groups, None, None, None)
    assert status.startswith("Trained on the ViT's features of 12 photos in 2 classes")
    answer = ends.own_answer(groups[0][0], classifier)
    assert max(answer, key=answer.get) == "red"
    assert ends.own_answer(groups[0][0], None) is None and ends.own_answer(None, classifier) is None
    with pytest.raises(UserError, match="Class 'blue' has 0 photos"):
        ends.train_own("red, blue", "ViT", groups[0], None)
    demo = app.build_demo(loaded, tmp_path / "out2")
    train = next(f for f in demo.fns.values() if f.fn is not None and f.fn.__name__ == "train_own")
    assert isinstance(train.outputs[0], gr.State)  # per visitor, never shared
    assert train.api_visibility == "private"
    assert isinstance(train.inputs[1], gr.Radio) and not train.inputs[1].visible  # no CNN: the ViT's features


def test_the_map_follows_each_shown_picture_and_each_training_and_is_cleared_with_the_picture(vit, cnn, tmp_path):
    demo = app.build_demo(Loaded(vit, "status"), tmp_path / "out", cnn=cnn)
    events = [f for f in demo.fns.values() if f.fn is not None]
    named = {f.api_name: f for f in events if f.api_visibility != "private"}
    own, own_map, view = named["own"], named["own_map"], named["view"]
    assert own_map.trigger_after == view._id and own_map.trigger_only_on_success
    assert own_map.inputs == own.inputs  # the shown picture and the visitor's classifier
    assert [o.label for o in own_map.outputs] == ["Your classifier's map", "Your classifier's map caption"]
    assert [o.label for o in own.outputs] == ["Your classifier"]  # /own answers as before
    train = next(f for f in events if f.fn.__name__ == "train_own")
    assert train.inputs[1].visible and train.inputs[1].value == "ViT"  # a CNN to choose, the ViT first
    retrained = sorted(f.fn.__name__ for f in events if f.trigger_after == train._id)
    assert retrained == ["own_answer", "own_map"]
    cleared = [f for f in events if f.fn.__name__ == "no_answers"]
    assert len(cleared) == 2 and all({o._id for o in own_map.outputs} <= {o._id for o in f.outputs} for f in cleared)


def test_the_features_are_what_each_models_head_reads(vit, cnn):
    images = photos(RED, 3, 0)
    for model in (vit, cnn):
        read, x = own_classes.features(model, images), to_normalized(images, model.mean, model.std)
        with torch.no_grad():
            assert torch.allclose(model.head(read), model(x), atol=1e-5)
    with torch.no_grad():
        pooled = cnn.features(to_normalized(images, cnn.mean, cnn.std)).mean((2, 3)) * cnn.logit_scale
    assert torch.allclose(own_classes.features(cnn, images), pooled, atol=1e-6)


def test_a_probe_on_the_cnns_features_answers_through_the_cnn_alone(vit, cnn):
    classifier = own_classes.fit(cnn, ["red", "blue"], [photos(RED, 8, 0), photos(BLUE, 8, 1)])
    assert classifier.model == "CNN" and classifier.train_accuracy == 1.0
    assert classifier.weight.shape == (2, cnn.head.in_features)
    new_red, new_blue = photos((210, 30, 50), 1, 2)[0], photos((30, 50, 210), 1, 3)[0]
    assert own_classes.answer(cnn, classifier, new_red)["red"] > 0.5
    assert own_classes.answer(cnn, classifier, new_blue)["blue"] > 0.5
    for wrong in (own_classes.answer, own_classes.explain):  # another model's features mean nothing to it
        with pytest.raises(ValueError, match="reads the CNN's features, not the ViT's"):
            wrong(vit, classifier, new_red)


def test_the_cnn_probes_map_averaged_plus_its_bias_is_exactly_its_logit(cnn):
    classifier = own_classes.fit(cnn, ["red", "blue"], [photos(RED, 8, 0), photos(BLUE, 8, 1)])
    images = torch.cat([photos((210, 30, 50), 1, 2), photos((30, 50, 210), 1, 3)])
    x = to_normalized(images, cnn.mean, cnn.std)
    maps = own_classes.class_activation_maps(cnn, classifier, x)
    with torch.no_grad():
        assert maps.shape == (2, 2, *cnn.features(x).shape[2:])
    logits = classifier.logits(own_classes.features(cnn, images))
    assert torch.allclose(maps.mean((2, 3)) + classifier.bias, logits, rtol=1e-5, atol=1e-5)
    assert logits.abs().max() > 0.5  # an identity about real scores, not about zeros
    heat, best = own_classes.explain(cnn, classifier, images[1])
    assert best == int(logits[1].argmax()) == 1  # blue: its top class
    assert heat.max() == 1 and torch.allclose(heat, scale_to_unit(maps[1, 1:].clamp(min=0))[0])


def test_the_vit_probes_map_explains_the_probes_score_not_the_vits_head(vit):
    classifier = own_classes.fit(vit, ["red", "blue"], [photos(RED, 8, 0), photos(BLUE, 8, 1)])
    image = photos((30, 50, 210), 1, 3)[0]
    x = to_normalized(image[None], vit.mean, vit.std)
    heat, best = own_classes.explain(vit, classifier, image)
    assert best == 1  # blue: the probe's top class
    red, _ = gradient_rollout(vit, x, 0, head=classifier.logits)
    blue, _ = gradient_rollout(vit, x, 1, head=classifier.logits)
    assert torch.allclose(heat, scale_to_unit(blue)[0]) and not torch.allclose(red, blue, atol=1e-3)
    vits_own, _ = gradient_rollout(vit, x)  # the map of the ViT's own answer
    assert not torch.allclose(heat, scale_to_unit(vits_own)[0], atol=1e-3)


def test_the_visitor_chooses_the_model_and_its_classifier_answers_through_it(vit, cnn, tmp_path):
    ends = Endpoints(Loaded(vit, "status"), tmp_path / "out", cnn)
    groups = [saved(tmp_path, "red", photos(RED, 6, 0)), saved(tmp_path, "blue", photos(BLUE, 6, 1))]
    mine, status = ends.train_own("red, blue", "CNN", *groups, None, None, None)
    assert mine.model == "CNN" and status.startswith("Trained on the CNN's features of 12 photos in 2 classes")
    shown = groups[1][0]
    small = ends.read(shown)
    said = ends.own_answer(shown, mine)
    assert said == own_classes.answer(cnn, mine, small) and max(said, key=said.get) == "blue"
    picture, caption = ends.own_map(shown, mine)
    drawn = rollout_figure(small, own_classes.explain(cnn, mine, small)[0])
    assert np.array_equal(np.asarray(Image.open(picture).convert("RGB")), drawn)
    assert caption.startswith("Why **blue**, your classifier's top class?") and "class activation map" in caption
    theirs, _ = ends.train_own("red, blue", "ViT", *groups, None, None, None)
    assert theirs.model == "ViT" and ends.own_answer(shown, theirs) == own_classes.answer(vit, theirs, small)
    assert "gradient-weighted rollout" in ends.own_map(shown, theirs)[1]
    assert ends.own_map(None, mine) == (None, "") == ends.own_map(shown, None)
    with pytest.raises(UserError, match="The model must be one of ViT, CNN, not 'MLP'"):
        ends.train_own("red, blue", "MLP", *groups)
    alone = Endpoints(Loaded(vit, "status"), tmp_path / "out")
    with pytest.raises(UserError, match="^No CNN is loaded beside the ViT: train your classifier on the ViT's"):
        alone.train_own("red, blue", "CNN", *groups)
