import json

import pytest
import torch
from conftest import CLASSES

import common.model_folder
import training.card
import training.lineage
import training.plots
from vit_model import ViT


def summary(history, epochs=1) -> training.card.RunSummary:
    return training.card.RunSummary(
        recipe="assignment",
        recipe_description="assignment recipe, 1 epoch",
        data="test data",
        machine="a CPU",
        command="python train.py",
        epochs=epochs,
        best_epoch=1,
        val_acc=0.5,
        val_acc_flip_tta=0.52,
        val_images=4,
        split_seed=0,
        class_names=CLASSES[:2],
        confusion=[[1, 1], [0, 2]],
        history=history,
        settings={"lr": 5e-4},
    )


def test_one_epoch_run_shows_its_point_and_says_one_epoch(tmp_path):
    history = [
        {"epoch": 1, "lr": 5e-4, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.9, "val_acc": 0.5, "seconds": 30.0}
    ]
    run = summary(history)
    training.plots.save_curves(history, tmp_path / "curves.png")
    import matplotlib.image

    pixels = matplotlib.image.imread(tmp_path / "curves.png")
    # Not empty axes: the single point is drawn as a marker in the plot's colours.
    coloured = (abs(pixels[..., 0] - pixels[..., 2]) > 0.3).sum()
    assert coloured > 20
    card = training.card.model_card(run, 1000)
    assert "1 epoch)" in card and "1 epochs" not in card
    assert "52.00%" in card and "50.00%" in card
    assert run.per_class_acc == [0.5, 1.0]
    assert "notes" not in card
    history[0]["note"] = "paused for 40 minutes; counted at the median epoch"
    card = training.card.model_card(run, 1000)
    assert "| notes | epoch 1: paused for 40 minutes; counted at the median epoch |" in card


def test_export_holds_weights_card_and_training_json(tmp_path):
    model = ViT(dim=32, depth=1, heads=2, mlp_dim=32)
    history = [
        {"epoch": 1, "lr": 5e-4, "train_loss": 2.0, "train_acc": 0.3, "val_loss": 1.9, "val_acc": 0.5, "seconds": 30.0}
    ]
    for name in list(common.model_folder.FIGURES)[:1]:
        training.plots.save_curves(history, tmp_path / name)
    export = training.card.export_model(model, tmp_path, summary(history))
    info = json.loads((export / common.model_folder.TRAINING_FILE).read_text())
    assert info["val_acc"] == 0.5 and info["val_acc_flip_tta"] == 0.52 and info["recipe"] == "assignment"
    assert info["history"] == history and info["training_minutes"] == 0.5
    assert (export / "curves.png").exists()
    loaded = ViT.from_pretrained(export).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert not list(tmp_path.glob(".export*"))


def test_hub_failure_names_the_cause(tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    with pytest.raises(RuntimeError, match="me/vit failed .*ConnectionError.*intact"):
        training.card.push_to_hub(tmp_path, "me/vit")


def test_a_run_that_moved_between_machines_names_each_with_its_epochs(tmp_path):
    def row(epoch, **extra):
        return {"epoch": epoch, "val_acc": 0.1 * epoch, "seconds": 60.0, **extra}

    zen3, zen4 = "AMD EPYC CPU (AVX2), 2 threads", "AMD EPYC CPU (AVX512, native bf16), 2 threads"
    history = [row(1), row(2), row(3, machine=zen3), row(4, machine=zen4), row(5, machine=zen4)]
    assert training.lineage.machines_of(history) == (
        f"machine not recorded (epochs 1-2); {zen3} (epoch 3); {zen4} (epochs 4-5)"
    )
    assert training.lineage.machines_of(history[3:]) == zen4
    assert [(m, [h["epoch"] for h in rows]) for m, rows in training.lineage.machine_spans(history)] == [
        ("machine not recorded", [1, 2]),
        (zen3, [3]),
        (zen4, [4, 5]),
    ]
    training.plots.save_time_to_accuracy(history, tmp_path / "time.png")
    assert (tmp_path / "time.png").stat().st_size > 1000


def test_the_machine_is_named_with_its_vector_units():
    import training.runtime

    machine = training.runtime.ProcessPlacement(0, 1, torch.device("cpu")).machine()
    units = torch.backends.cpu.get_cpu_capability()
    assert f"CPU ({units}" in machine and machine.endswith(f"{torch.get_num_threads()} threads")
    assert ("native bf16" in machine) == training.runtime.cpu_has_native_bf16()


def test_the_training_time_counts_every_teacher_down_the_line():
    grandparent = {"history": [{"epoch": 1, "seconds": 600.0}], "best_epoch": 1, "teacher": {"training_minutes": 28.0}}
    parent = {
        "history": [{"epoch": 1, "seconds": 300.0}, {"epoch": 2, "seconds": 300.0}],
        "best_epoch": 1,
        "epochs": 2,
        "recipe": "budget",
        "val_acc": 0.8,
        "parent": grandparent,
        "teacher": {"training_minutes": 12.0},
    }
    run = summary([{"epoch": 1, "seconds": 60.0}])
    run.parent = parent
    # 10 + 5 (the parent up to its best epoch) + 1 minutes of epochs, 28 + 12 of teachers
    assert run.training_minutes == pytest.approx(56.0)
    assert run.started_from.endswith("(80.00% validation, itself distilled from a CNN teacher)")


def test_every_fine_tune_down_the_line_is_marked_where_it_began():
    grandparent = {"history": [{"epoch": e} for e in (1, 2, 3)], "best_epoch": 3}
    parent = {
        "history": [{"epoch": e} for e in (1, 2, 3, 4)],
        "best_epoch": 2,
        "parent": grandparent,
        "teacher": {"training_minutes": 12.0},
    }
    run = summary([{"epoch": 1}, {"epoch": 2}])
    assert run.fine_tunes == []
    run.parent = parent
    # the parent began after the grandparent's 3 epochs, distilled; this run after 3 + 2
    assert run.fine_tunes == [(3, True), (5, False)]
    assert [h["epoch"] for h in run.full_history] == [1, 2, 3, 4, 5, 6, 7]


def test_a_published_record_names_no_folder_of_the_training_machine_at_any_level():
    machine_paths = {
        "data_dir": "/work/data/cifar10-jpeg",
        "out": "/work/runs/distill",
        "init_from": "/home/me/weights",
        "teacher": "/work/runs/teacher",
    }
    grandparent = {
        "command": "python train.py --data-dir /work/data/cifar10-jpeg --epochs 150",
        "settings": dict(machine_paths),
        "history": [],
    }
    parent = {
        "command": "python train.py --init-from /home/me/weights --teacher /work/runs/teacher",
        "settings": dict(machine_paths),
        "parent": grandparent,
        "history": [],
        "teacher": {"command": "python train.py --out /work/runs/teacher", "val_acc": 0.9},
    }
    public = training.lineage.public_record({"parent": parent, "history": []})
    assert "/work" not in json.dumps(public) and "/home" not in json.dumps(public)
    assert public["parent"]["command"] == "python train.py --init-from weights --teacher teacher"
    assert public["parent"]["parent"]["settings"]["data_dir"] == "cifar10-jpeg"
    assert public["parent"]["teacher"] == {"command": "python train.py --out teacher", "val_acc": 0.9}
    assert parent["settings"]["out"] == "/work/runs/distill"  # the original is left alone
    assert training.lineage.public_record(None) is None


def test_the_bundled_models_published_record_names_no_machine_folder():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "weights"
    for path in (root / "training.json", root / "cnn" / "training.json"):
        assert "/work/" not in json.dumps(training.lineage.public_record(json.loads(path.read_text())))


def test_a_card_shows_no_command_for_a_run_whose_epochs_grew_on_a_resume():
    grown = [
        {"epoch": 1, "seconds": 60.0},
        {"epoch": 2, "seconds": 60.0, "note": "resumed with --epochs 2 instead of 1: ..."},
    ]
    assert training.lineage.replayable(grown[:1]) and not training.lineage.replayable(grown)
    card = training.card.model_card(summary(grown[:1]), 1000)
    assert "Command: `python train.py`" in card
    card = training.card.model_card(summary(grown, epochs=2), 1000)
    assert "Command: no single command" in card and "`python train.py`" not in card
    assert summary(grown, epochs=2).as_json()["command"] is None
    run = summary([{"epoch": 1, "seconds": 60.0}])
    run.parent = {
        "command": "python train.py --epochs 150",
        "history": grown,
        "best_epoch": 2,
        "epochs": 2,
        "recipe": "budget",
        "val_acc": 0.8,
    }
    assert (
        "started from | the best epoch (2 of 2) of a run with the budget recipe (80.00% "
        "validation): no single command" in training.card.model_card(run, 1000)
    )


def test_time_to_accuracy_counts_each_teacher_where_its_distillation_began(tmp_path):
    grandparent = {
        "history": [{"epoch": 1, "seconds": 600.0, "val_acc": 0.5}],
        "best_epoch": 1,
        "teacher": {"training_minutes": 28.0},
    }
    parent = {
        "history": [{"epoch": 1, "seconds": 300.0, "val_acc": 0.6}, {"epoch": 2, "seconds": 300.0}],
        "best_epoch": 1,
        "epochs": 2,
        "recipe": "budget",
        "val_acc": 0.6,
        "parent": grandparent,
        "teacher": {"training_minutes": 12.0},
    }
    run = summary([{"epoch": 1, "seconds": 60.0, "val_acc": 0.7}])
    run.parent = parent
    teachers = run.teachers
    assert teachers == [(0, 28.0), (1, 12.0)]  # before the grandparent's first epoch; after its 1
    minutes = training.lineage.minutes_at_epochs(run.full_history, teachers)
    assert minutes == pytest.approx([28 + 10, 38 + 12 + 5, 55 + 1])
    assert minutes[-1] == pytest.approx(run.training_minutes)  # the card's figure, the plot's end
    training.plots.save_time_to_accuracy(run.full_history, tmp_path / "time.png", teachers)
    assert (tmp_path / "time.png").stat().st_size > 1000
