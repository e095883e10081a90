"""distillation.py and train.py --teacher: an exported CNN teaches the ViT (hard-label
distillation), and every folder that cannot teach is refused before training starts."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import cnn_args, run_args
from safetensors.torch import load_file, save_file

import train
import training.epoch
import training.runtime
from training.distillation import Distillation


@pytest.fixture(scope="module")
def cnn_teacher(shared_folder_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "cnn"
    result = train.main(cnn_args(shared_folder_data, out, "--epochs", "1"))
    return out / "export", result


def one_step_loss(distill, mixing=None) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss train_one_epoch reports for one step of a linear student, with its inputs."""
    torch.manual_seed(0)
    student, x = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10)), torch.randn(8, 3, 2, 2)
    y = torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    row = training.epoch.train_one_epoch(
        student,
        optimizer,
        scheduler,
        [(x, y)],
        steps=1,
        augment=lambda b, g: b,
        generator=torch.Generator(),
        mixing=mixing,
        label_smoothing=0.0,
        bf16=False,
        procs=training.runtime.ProcessPlacement(0, 1, torch.device("cpu")),
        distill=distill,
    )
    return row["train_loss"], student(x), x, y


def test_hard_distillation_is_half_labels_half_the_teachers_class():
    always_seven = lambda images: F.one_hot(torch.full((len(images),), 7), 10).float()
    loss, logits, _, y = one_step_loss(Distillation(always_seven))
    expected = (F.cross_entropy(logits, y) + F.cross_entropy(logits, torch.full((8,), 7))) / 2
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_soft_distillation_is_half_labels_half_kl_at_the_temperature():
    teacher_logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    teacher = lambda images: teacher_logits
    loss, logits, _, y = one_step_loss(Distillation(teacher, soft=True, temperature=2.0))
    p = F.softmax(teacher_logits / 2, dim=1)
    kl = (p * (p.log() - F.log_softmax(logits / 2, dim=1))).sum(dim=1).mean()
    assert loss == pytest.approx(((F.cross_entropy(logits, y) + 4 * kl) / 2).item(), rel=1e-5)


def test_the_teacher_sees_the_batch_the_student_sees_mixed():
    seen = []

    def teacher(images):
        seen.append(images.clone())
        return torch.zeros(len(images), 10)

    mixed = lambda x, y: (x.flip(0) * 0.5 + x * 0.5, F.one_hot(y, 10).float())
    _, _, x, _ = one_step_loss(Distillation(teacher, soft=True), mixing=mixed)
    assert torch.equal(seen[0], x.flip(0) * 0.5 + x * 0.5)


def test_a_distilled_run_names_its_teacher_and_counts_its_time(cnn_teacher, shared_folder_data, tmp_path):
    folder, teacher = cnn_teacher
    result = train.main(run_args(shared_folder_data, tmp_path / "run", "--epochs", "1", "--teacher", str(folder)))
    assert result["teacher"]["val_acc"] == pytest.approx(teacher["val_acc"])
    assert result["teacher"]["widths"] == [8, 16] and "history" not in result["teacher"]
    own = result["history"][0]["seconds"] / 60
    assert result["training_minutes"] == pytest.approx(own + teacher["training_minutes"], abs=0.06)
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert "| teacher | a CNN of widths [8, 16] trained on the same split for 1 epoch (cnn recipe" in card
    assert f"--teacher {folder.name}`" in card


def broken_copy(folder, tmp_path, name):
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    return copy


def nan_weights(copy):
    weights = load_file(copy / "model.safetensors")
    weights["head.bias"][0] = float("nan")
    save_file(weights, copy / "model.safetensors")


def without_mean(copy):
    config = json.loads((copy / "config.json").read_text())
    del config["mean"]
    (copy / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage, message",
    [
        (None, "was trained on another split .*this run: 30, seed 4"),
        (lambda c: (c / "config.json").unlink(), "lacks config.json: pass the export/ folder"),
        (nan_weights, "its weights hold NaN or infinite values"),
        (lambda c: (c / "model.safetensors").write_bytes(b"not a model"), "do not load into the CNN"),
        (without_mean, "its config.json lacks the mean and std of the images it was trained on"),
    ],
)
def test_a_folder_that_cannot_teach_is_refused(cnn_teacher, shared_folder_data, tmp_path, damage, message):
    folder, _ = cnn_teacher
    if damage:
        folder = broken_copy(folder, tmp_path, "teacher")
        damage(folder)
    seed = ["--seed", "4"] if damage is None else []
    with pytest.raises(SystemExit, match=message):
        train.main(run_args(shared_folder_data, tmp_path / "run", "--epochs", "1", "--teacher", str(folder), *seed))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_old_teacher_folders_a_vit_and_a_missing_folder_are_named(shared_folder_data, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "teacher.json").write_text(json.dumps({"widths": [8, 16]}))
    vit = tmp_path / "vit"
    vit.mkdir()
    for name, text in (("config.json", '{"dim": 64}'), ("model.safetensors", ""), ("training.json", "{}")):
        (vit / name).write_text(text)
    for folder, message in (
        (old, "written by the old teacher.py, which is gone: train a CNN"),
        (vit, "holds no CNN"),
        (tmp_path / "nowhere", "nowhere does not exist"),
    ):
        with pytest.raises(SystemExit, match=message):
            train.main(run_args(shared_folder_data, tmp_path / "run", "--epochs", "1", "--teacher", str(folder)))


def test_a_soft_distilled_run_says_so_in_its_card(cnn_teacher, shared_folder_data, tmp_path):
    folder, _ = cnn_teacher
    result = train.main(
        run_args(
            shared_folder_data,
            tmp_path / "run",
            "--epochs",
            "1",
            "--teacher",
            str(folder),
            "--distill",
            "soft",
            "--temperature",
            "2",
        )
    )
    assert result["distilled_from"].endswith(
        "half the loss the KL divergence to its probabilities at temperature 2 (soft distillation)"
    )
    assert "--distill soft --temperature 2" in result["command"]
