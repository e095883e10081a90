import json

import pytest
import torch

import report
from conftest import CLASSES
from vit_model import ViT


def test_prediction_samples_come_from_every_class():
    labels = torch.arange(10).repeat_interleave(50)   # class-sorted, as a validation split can be
    pick = report.one_per_class(labels, 32)
    assert len(set(pick.tolist())) == 32
    assert sorted(labels[pick[:10]].tolist()) == list(range(10))
    counts = torch.bincount(labels[pick], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert report.one_per_class(torch.tensor([2, 2, 0]), 5).tolist() == [2, 0, 1]


def summary(history, epochs=1) -> report.RunSummary:
    return report.RunSummary(
        recipe="assignment", recipe_description="assignment recipe, 1 epoch", data="test data",
        machine="a CPU", command="python train.py", epochs=epochs, best_epoch=1, val_acc=0.5,
        val_acc_flip_tta=0.52, val_images=4, split_seed=0, class_names=CLASSES[:2],
        confusion=[[1, 1], [0, 2]], history=history, settings={"lr": 5e-4})


def test_one_epoch_run_shows_its_point_and_says_one_epoch(tmp_path):
    history = [{"epoch": 1, "lr": 5e-4, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.9,
                "val_acc": 0.5, "seconds": 30.0}]
    run = summary(history)
    report.save_curves(history, tmp_path / "curves.png")
    import matplotlib.image
    pixels = matplotlib.image.imread(tmp_path / "curves.png")
    # Not empty axes: the single point is drawn as a marker in the plot's colours.
    coloured = (abs(pixels[..., 0] - pixels[..., 2]) > 0.3).sum()
    assert coloured > 20
    card = report.model_card(run, 1000)
    assert "1 epoch)" in card and "1 epochs" not in card
    assert "52.00%" in card and "50.00%" in card
    assert run.per_class_acc == [0.5, 1.0]
    assert "notes" not in card
    history[0]["note"] = "paused for 40 minutes; counted at the median epoch"
    assert "| notes | epoch 1: paused for 40 minutes; counted at the median epoch |" in report.model_card(run, 1000)


def test_export_holds_weights_card_and_training_json(tmp_path):
    model = ViT(dim=32, depth=1, heads=2, mlp_dim=32)
    history = [{"epoch": 1, "lr": 5e-4, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.9,
                "val_acc": 0.5, "seconds": 30.0}]
    for name in report.PLOTS[:1]:
        report.save_curves(history, tmp_path / name)
    export = report.export_model(model, tmp_path, summary(history))
    info = json.loads((export / report.TRAINING_FILE).read_text())
    assert info["val_acc"] == 0.5 and info["val_acc_flip_tta"] == 0.52 and info["recipe"] == "assignment"
    assert info["history"] == history and info["training_minutes"] == 0.5
    assert (export / "curves.png").exists() and ViT.from_pretrained(export) is not None
    assert not list(tmp_path.glob(".export*"))


def test_hub_failure_names_the_cause(tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    with pytest.raises(RuntimeError, match="me/vit failed .*ConnectionError.*intact"):
        report.push_to_hub(tmp_path, "me/vit")


def test_a_run_that_moved_between_machines_names_each_with_its_epochs(tmp_path):
    def row(epoch, **extra):
        return {"epoch": epoch, "val_acc": 0.1 * epoch, "seconds": 60.0, **extra}

    zen3, zen4 = "AMD EPYC CPU (AVX2), 2 threads", "AMD EPYC CPU (AVX512, native bf16), 2 threads"
    history = [row(1), row(2), row(3, machine=zen3), row(4, machine=zen4), row(5, machine=zen4)]
    assert report.machines_of(history) == (f"machine not recorded (epochs 1-2); {zen3} (epoch 3); "
                                           f"{zen4} (epochs 4-5)")
    assert report.machines_of(history[3:]) == zen4
    assert [(m, [h["epoch"] for h in rows]) for m, rows in report.machine_spans(history)] == \
        [("machine not recorded", [1, 2]), (zen3, [3]), (zen4, [4, 5])]
    report.save_time_to_accuracy(history, tmp_path / "time.png")
    assert (tmp_path / "time.png").stat().st_size > 1000


def test_the_machine_is_named_with_its_vector_units():
    import loop

    machine = loop.Processes(0, 1, torch.device("cpu")).machine()
    units = torch.backends.cpu.get_cpu_capability()
    assert f"CPU ({units}" in machine and machine.endswith(f"{torch.get_num_threads()} threads")
    assert ("native bf16" in machine) == loop.cpu_has_native_bf16()


def test_distilled_curves_say_their_training_loss_is_half_the_teachers(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig))
    history = [{"epoch": e, "lr": 5e-4, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.9,
                "val_acc": 0.5, "seconds": 30.0} for e in (1, 2, 3)]
    report.save_curves(history, tmp_path / "a.png", started_after=2, distilled=True)
    report.save_curves(history, tmp_path / "b.png", distilled=True)
    report.save_curves(history, tmp_path / "c.png", started_after=2)
    texts = [[t.get_text() for ax in fig.axes for t in ax.texts + ax.get_legend().get_texts()]
             for fig in figures]
    assert "fine-tuning, distilled (train loss half vs teacher)" in texts[0]
    assert "train (augmented, regularized, loss half vs teacher)" in texts[1]
    assert "fine-tuning" in texts[2] and not any("teacher" in t for t in texts[2])
