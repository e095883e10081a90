"""teacher.py: the CNN teacher, and train.py --teacher (hard-label distillation)."""

import json

import pytest
import torch
import torch.nn.functional as F

import loop
import teacher
import train
from test_train import run_args


@pytest.fixture(scope="module")
def trained_teacher(shared_folder_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "cnn"
    record = teacher.main(["--data-dir", str(shared_folder_data), "--out", str(out), "--epochs", "2",
                           "--widths", "8,16", "--batch-size", "32", "--val-size", "30"])
    return out, record


def test_teacher_saves_what_it_trained_and_loads_it_back(trained_teacher, shared_folder_data):
    out, record = trained_teacher
    saved = json.loads((out / "teacher.json").read_text())
    assert saved["widths"] == [8, 16] and saved["val_images"] == 30 and saved["split_seed"] == 0
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    assert saved["val_acc"] == pytest.approx(record["val_acc"]) == pytest.approx(saved["history"][-1]["val_acc"])
    model, _ = teacher.load_teacher(out)
    assert not model.training
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)


def test_distillation_loss_is_half_labels_half_teacher():
    torch.manual_seed(0)
    student, x = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10)), torch.randn(8, 3, 2, 2)
    y = torch.randint(0, 10, (8,))
    always_seven = lambda images: F.one_hot(torch.full((len(images),), 7), 10).float()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    row = loop.train_one_epoch(student, optimizer, scheduler, [(x, y)], steps=1,
                               augment=lambda b, g: b, generator=torch.Generator(), mixing=None,
                               label_smoothing=0.0, bf16=False,
                               procs=loop.Processes(0, 1, torch.device("cpu")), teacher=always_seven)
    logits = student(x)
    expected = (F.cross_entropy(logits, y) + F.cross_entropy(logits, torch.full((8,), 7))) / 2
    assert row["train_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_a_distilled_run_names_its_teacher_and_counts_its_time(trained_teacher, shared_folder_data, tmp_path):
    out, record = trained_teacher
    result = train.main(run_args(shared_folder_data, tmp_path / "run", "--epochs", "1",
                                 "--teacher", str(out)))
    assert result["teacher"]["val_acc"] == pytest.approx(record["val_acc"])
    assert "history" not in result["teacher"]
    own = result["history"][0]["seconds"] / 60
    assert result["training_minutes"] == pytest.approx(own + record["training_minutes"], abs=0.06)
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert "| teacher | a CNN of widths [8, 16] trained by teacher.py on the same split" in card
    assert result["distilled_from"].startswith("a CNN of widths [8, 16]")
    assert f"--teacher {out.name}`" in card


def test_a_teacher_from_another_split_or_no_teacher_is_refused(trained_teacher, shared_folder_data, tmp_path):
    out, _ = trained_teacher
    with pytest.raises(SystemExit, match="trained on another split .*this run: 30, seed 4"):
        train.main(run_args(shared_folder_data, tmp_path / "run", "--epochs", "1",
                            "--teacher", str(out), "--seed", "4"))
    with pytest.raises(SystemExit, match="teacher.json is missing"):
        train.main(run_args(shared_folder_data, tmp_path / "run2", "--epochs", "1",
                            "--teacher", str(tmp_path)))


@pytest.mark.parametrize("flags, message", [
    (["--widths", "8"], "--widths: must be two or more positive whole numbers, got 8"),
    (["--widths", "8,x"], "--widths: must be two or more"),
    (["--epochs", "0"], "must be positive"),
])
def test_bad_teacher_arguments_fail_at_once(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        teacher.main(["--data-dir", str(tmp_path), *flags])
    assert message in capsys.readouterr().err


def test_a_stopped_teacher_resumes_to_the_same_weights(trained_teacher, shared_folder_data, folder_data,
                                                      tmp_path, monkeypatch):
    out, record = trained_teacher
    flags = ["--data-dir", str(shared_folder_data), "--out", str(tmp_path / "cnn"), "--epochs", "2",
             "--widths", "8,16", "--batch-size", "32", "--val-size", "30", "--no-progress"]
    real_epoch = teacher.train_epoch

    def stop_in_epoch_two(*args):
        if args[5] == 1:
            raise KeyboardInterrupt
        real_epoch(*args)

    monkeypatch.setattr(teacher, "train_epoch", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        teacher.main(flags)
    assert not (tmp_path / "cnn" / "teacher.json").exists()
    monkeypatch.setattr(teacher, "train_epoch", real_epoch)
    with pytest.raises(SystemExit, match="teacher_last.pt exists: add --resume"):
        teacher.main(flags)
    with pytest.raises(SystemExit, match=r"other settings than the saved teacher's \(--lr 0.2\)"):
        teacher.main(flags + ["--resume", "--lr", "0.1"])
    with pytest.raises(SystemExit, match="--resume on other images than the saved teacher's"):
        teacher.main(flags + ["--resume", "--data-dir", str(folder_data)])
    resumed = teacher.main(flags + ["--resume"])
    assert [h["val_acc"] for h in resumed["history"]] == [h["val_acc"] for h in record["history"]]
    model, _ = teacher.load_teacher(tmp_path / "cnn")
    reference, _ = teacher.load_teacher(out)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_without_a_checkpoint_says_so(shared_folder_data, tmp_path):
    with pytest.raises(SystemExit, match="--resume, but .*teacher_last.pt does not exist"):
        teacher.main(["--data-dir", str(shared_folder_data), "--out", str(tmp_path), "--resume"])
