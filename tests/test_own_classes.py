"""space/own_classes.py and the "Your own classes" tab: names, limits, a probe that learns
the visitor's classes from the ViT's frozen features, kept in the visitor's page state."""

from pathlib import Path

import gradio as gr
import pytest
import torch
from PIL import Image

import app
from common.model_folder import load_folder
from space import own_classes
from space.endpoints import Endpoints
from space.model_source import Loaded
from space.photo import UserError

BUNDLED = Path(__file__).resolve().parent.parent / "weights"


def photos(tint: tuple[int, int, int], n: int, seed: int) -> torch.Tensor:
    """n uint8 32x32 images of one colour with noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(-40, 41, (n, 3, 32, 32), generator=g)
    return (torch.tensor(tint).view(1, 3, 1, 1) + noise).clamp(0, 255).to(torch.uint8)


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
    groups = []
    for name, tint in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        paths = []
        for i, image in enumerate(photos(tint, 6, len(groups))):
            path = tmp_path / f"{name}{i}.png"
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
            paths.append(str(path))
        groups.append(paths)
    classifier, status = ends.train_own("red, blue", *groups, None, None, None)
    assert status.startswith("Trained on 12 photos in 2 classes")
    answer = ends.own_answer(groups[0][0], classifier)
    assert max(answer, key=answer.get) == "red"
    assert ends.own_answer(groups[0][0], None) is None and ends.own_answer(None, classifier) is None
    with pytest.raises(UserError, match="Class 'blue' has 0 photos"):
        ends.train_own("red, blue", groups[0], None)
    demo = app.build_demo(loaded, tmp_path / "out2")
    train = next(f for f in demo.fns.values() if f.fn is not None and f.fn.__name__ == "train_own")
    assert isinstance(train.outputs[0], gr.State)  # per visitor, never shared
    assert train.api_visibility == "private"
