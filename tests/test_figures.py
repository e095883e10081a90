"""figures.py: the run's PNGs."""

import torch

import figures


def test_prediction_samples_come_from_every_class():
    labels = torch.arange(10).repeat_interleave(50)   # class-sorted, as a validation split can be
    pick = figures.one_per_class(labels, 32)
    assert len(set(pick.tolist())) == 32
    assert sorted(labels[pick[:10]].tolist()) == list(range(10))
    counts = torch.bincount(labels[pick], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert figures.one_per_class(torch.tensor([2, 2, 0]), 5).tolist() == [2, 0, 1]


def test_distilled_curves_say_their_training_loss_is_half_the_teachers(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    history = [{"epoch": e, "lr": 5e-4, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.9,
                "val_acc": 0.5, "seconds": 30.0} for e in (1, 2, 3)]
    figures.save_curves(history, tmp_path / "a.png", started_after=2, distilled=True)
    figures.save_curves(history, tmp_path / "b.png", distilled=True)
    figures.save_curves(history, tmp_path / "c.png", started_after=2)
    texts = [[t.get_text() for ax in fig.axes for t in ax.texts + ax.get_legend().get_texts()]
             for fig in drawn]
    assert "fine-tuning, distilled (train loss half vs teacher)" in texts[0]
    assert "train (augmented, regularized, loss half vs teacher)" in texts[1]
    assert "fine-tuning" in texts[2] and not any("teacher" in t for t in texts[2])
