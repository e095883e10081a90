"""calibration.py: temperature scaling, calibration error and out-of-distribution scores."""

import pytest
import torch

import calibration


def test_the_fitted_temperature_undoes_a_known_overconfidence():
    torch.manual_seed(0)
    true_logits = 2 * torch.randn(20000, 10)
    labels = torch.distributions.Categorical(logits=true_logits).sample()  # calibrated at T = 1
    overconfident = 3 * true_logits
    assert calibration.fit_temperature(overconfident, labels) == pytest.approx(3.0, rel=0.05)
    before = calibration.expected_calibration_error(overconfident.softmax(1), labels)
    after = calibration.expected_calibration_error((overconfident / 3).softmax(1), labels)
    assert after < 0.02 < 0.1 < before


def test_calibration_error_is_the_gap_between_confidence_and_accuracy():
    probs = torch.tensor([[0.9, 0.1]] * 10)  # 90% confident everywhere
    labels = torch.tensor([0] * 6 + [1] * 4)  # right 60% of the time
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.3)


def test_out_of_distribution_scores_and_their_auroc():
    logits = torch.tensor([[4.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(calibration.ood_score(logits, "max_logit"), torch.tensor([4.0, 1.0]))
    assert torch.allclose(calibration.ood_score(logits, "energy"), torch.logsumexp(logits, 1))
    assert torch.allclose(calibration.ood_score(logits, "max_softmax"), logits.softmax(1).max(1).values)
    with pytest.raises(ValueError, match="unknown score"):
        calibration.ood_score(logits, "entropy")
    inside, outside = torch.tensor([3.0, 4.0, 5.0]), torch.tensor([1.0, 3.0])
    assert calibration.auroc(inside, outside) == pytest.approx((3 + 2.5) / 6)  # one tie, half
    assert calibration.auroc(outside + 10, outside) == 1.0


def test_the_threshold_keeps_the_asked_fraction_of_validation_scores():
    scores = torch.arange(1000, dtype=torch.float)
    cut = calibration.threshold_keeping(scores, 0.95)
    assert (scores >= cut).float().mean() == pytest.approx(0.95, abs=0.002)


def test_reliability_bins_hold_each_bins_confidence_accuracy_and_count():
    probs = torch.tensor([[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.52, 0.48]])
    labels = torch.tensor([0, 1, 0, 0])
    bins = calibration.reliability_bins(probs, labels, bins=10)
    assert [(round(c, 3), a, n) for c, a, n in bins] == [(0.535, 1.0, 2), (0.935, 0.5, 2)]


def test_the_reliability_diagram_is_drawn(tmp_path):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(200, 10, generator=g), torch.randint(0, 10, (200,), generator=g)
    calibration.save_reliability_diagram(logits, labels, 0.5, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_mahalanobis_scores_points_near_a_class_mean_above_far_ones():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    labels = torch.arange(2).repeat(200)
    train = centres[labels] + torch.randn(400, 2, generator=g)
    near, far = torch.tensor([[10.2, 0.1], [0.1, -0.2]]), torch.tensor([[5.0, 8.0], [-9.0, 9.0]])
    scores = calibration.mahalanobis_score(train, labels, torch.cat([near, far]))
    assert scores[:2].min() > scores[2:].max() and (scores <= 0).all()
    assert float(scores[0]) == pytest.approx(-float(((near[0] - train[labels == 1].mean(0)) ** 2).sum()), rel=0.5)


def test_the_pair_threshold_standardizes_each_model_and_keeps_95_percent_of_the_sum():
    torch.manual_seed(0)
    first, second = 3 + 2 * torch.randn(2000), -1 + 0.5 * torch.randn(2000)
    pair = calibration.fit_pair(first, second)
    assert pair.means == pytest.approx((float(first.mean()), float(second.mean())))
    assert pair.stds == pytest.approx((float(first.std()), float(second.std())))
    z = pair.standardized(first, second)
    assert z.mean(1).tolist() == pytest.approx([0, 0], abs=1e-6) and z.std(1).tolist() == pytest.approx([1, 1])
    kept = (pair.score(first, second) >= pair.threshold).double().mean()
    assert float(kept) == pytest.approx(0.95, abs=0.002)
    # A model with ten times the spread does not outweigh the other in the sum.
    assert calibration.fit_pair(first, 10 * second).threshold == pytest.approx(pair.threshold, rel=1e-6)


def test_the_card_gets_the_calibration_row_and_diagram_once():
    card = (
        "# A model\n\n| | |\n|---|---|\n| best epoch | 3 of 4 |\n| training time | 2 min |\n\n"
        "![curves](curves.png)\n\nUse it.\n"
    )
    figures = {
        "temperature": 0.8,
        "known_threshold": 2.5,
        "ece_before": 0.1,
        "ece_after": 0.05,
        "images": 50,
        "known_fraction": 0.95,
    }
    once = calibration.card_with_calibration(card, figures)
    lines = once.splitlines()
    row = lines.index(next(line for line in lines if line.startswith("| calibration |")))
    assert lines[row + 1] == "| training time | 2 min |" and "temperature 0.800" in lines[row]
    assert lines[lines.index("![curves](curves.png)") + 2] == "![reliability](reliability.png)"
    again = calibration.card_with_calibration(once, {**figures, "temperature": 0.9})
    assert again.count("| calibration |") == 1 and "temperature 0.900" in again
    assert again.count("reliability.png") == 1 and again.endswith("Use it.\n")
