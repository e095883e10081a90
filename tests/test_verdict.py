"""space/verdict.py: calibrated probabilities, the known / unknown call, and the words."""

import math

import pytest
import torch

from space.verdict import Answer, NotANumberError, answer, in_words, verdict_markdown
from vit_model import ViT


def model_with(temperature: float, threshold: float | None) -> ViT:
    return ViT(dim=16, depth=1, heads=2, mlp_dim=16, temperature=temperature, known_threshold=threshold)


def test_confidences_are_the_softmax_over_the_temperature_and_score_is_energy():
    logits = torch.tensor([2.0, 1.0, 0.0] + [-1.0] * 7)
    said = answer(model_with(0.5, None), logits)
    expected = (logits / 0.5).softmax(0)
    assert list(said.confidences.values()) == pytest.approx(expected.tolist())
    assert said.label == "airplane" and said.known is None  # no threshold: no call made
    assert said.score == pytest.approx(0.5 * math.log(sum(math.exp(v / 0.5) for v in logits.tolist())))
    sharper = answer(model_with(0.5, None), logits).confidences["airplane"]
    assert sharper > answer(model_with(1.0, None), logits).confidences["airplane"]


def test_an_image_scoring_below_the_threshold_is_flagged():
    logits = torch.zeros(10)  # energy log(10) = 2.30
    assert answer(model_with(1.0, 2.0), logits).known is True
    flagged = answer(model_with(1.0, 3.0), logits)
    assert flagged.known is False
    assert in_words("ViT", flagged) == (
        "ViT: this does not look like any of the 10 classes; the closest is **airplane** (10%)."
    )


def test_a_non_finite_answer_is_refused():
    with pytest.raises(NotANumberError):
        answer(model_with(1.0, None), torch.tensor([float("nan")] + [0.0] * 9))


def test_the_verdict_says_when_the_models_disagree():
    vit = Answer("cat", {"cat": 0.7, "dog": 0.3}, True, 5.0)
    cnn = Answer("dog", {"cat": 0.4, "dog": 0.6}, True, 6.0)
    assert verdict_markdown(vit, None) == "ViT: **cat** (70%)."
    text = verdict_markdown(vit, cnn)
    assert text.splitlines() == [
        "ViT: **cat** (70%).  ",
        "CNN: **dog** (60%).  ",
        "The two models disagree: the ViT says cat, the CNN dog.",
    ]
    assert "disagree" not in verdict_markdown(vit, Answer("cat", {"cat": 0.9, "dog": 0.1}, True, 6.0))


def test_two_models_together_make_one_call_that_overrides_each_models_own():
    from calibration import fit_pair
    from space.verdict import together

    pair = fit_pair(torch.linspace(0, 10, 101), torch.linspace(0, 20, 101))
    vit = Answer("cat", {"cat": 0.7, "dog": 0.3}, False, 9.0)  # flagged alone,
    cnn = Answer("dog", {"cat": 0.4, "dog": 0.6}, True, 18.0)
    both = together(pair, vit, cnn)
    assert both.known and both.score == pytest.approx(float(pair.score(torch.tensor(9.0), torch.tensor(18.0))))
    assert verdict_markdown(vit, cnn, both).splitlines() == [  # but not together
        "ViT: **cat** (70%).  ",
        "CNN: **dog** (60%).  ",
        "The two models disagree: the ViT says cat, the CNN dog.",
    ]
    low = together(pair, Answer("cat", {"cat": 0.7, "dog": 0.3}, True, 0.0), Answer("cat", vit.confidences, True, 0.0))
    assert not low.known and low.as_json() == {"known": False, "score": low.score}
    assert verdict_markdown(vit, cnn, low) == (
        "This does not look like any of the 2 classes to the two models together; "
        "the closest is **cat** (70%) for the ViT and **dog** (60%) for the CNN."
    )
