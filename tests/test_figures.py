"""figures.py: the run's PNGs."""

import torch

import training.plots


def test_prediction_samples_come_from_every_class():
    labels = torch.arange(10).repeat_interleave(50)  # class-sorted, as a validation split can be
    pick = training.plots.one_per_class(labels, 32)
    assert len(set(pick.tolist())) == 32
    assert sorted(labels[pick[:10]].tolist()) == list(range(10))
    counts = torch.bincount(labels[pick], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert training.plots.one_per_class(torch.tensor([2, 2, 0]), 5).tolist() == [2, 0, 1]


def test_distilled_curves_say_their_training_loss_is_half_the_teachers(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(training.plots, "save_figure", lambda fig, path: drawn.append(fig))
    history = [
        {"epoch": e, "lr": 5e-4, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.9, "val_acc": 0.5, "seconds": 30.0}
        for e in (1, 2, 3)
    ]
    training.plots.save_curves(history, tmp_path / "a.png", [(2, True)], distilled=True)
    training.plots.save_curves(history, tmp_path / "b.png", distilled=True)
    training.plots.save_curves(history, tmp_path / "c.png", [(1, True), (2, False)])
    texts = [[t.get_text() for ax in fig.axes for t in ax.texts + ax.get_legend().get_texts()] for fig in drawn]
    assert "fine-tuning from epoch 3, distilled" in texts[0]
    assert drawn[0].get_suptitle().endswith("the training loss is half against the teacher's labels")
    assert "train (augmented, regularized, loss half vs teacher)" in texts[1]
    # every fine-tune marked, each in its own words
    assert [t for t in texts[2] if t.startswith("fine")] == [
        "fine-tuning from epoch 2, distilled",
        "fine-tuning from epoch 3",
    ]
    lines = [line.get_xdata()[0] for line in drawn[2].axes[1].lines[2:]]
    assert lines == [1.5, 2.5]
