"""train.py --model cnn: the CNN's recipe, its optimizer, an end-to-end run with its
export and card, exact resume, and the flags that belong to the other model."""

import json

import pytest
import torch
from conftest import cnn_args, interrupted_then_resumed, read_metrics

import train
import training.command_line
import training.optimization
from cnn_model import CNN
from data import load_training_data, to_normalized
from training.optimization import OptimizerSettings, build_optimizer, build_scheduler


def test_model_cnn_picks_the_cnn_recipe():
    args = training.command_line.parse_args(["--model", "cnn"])
    assert (args.recipe, args.model, args.optimizer, args.augment) == ("cnn", "cnn", "sgd", "translate")
    assert (args.batch_size, args.lr, args.momentum, args.label_smoothing) == (1024, 1.3, 0.85, 0.2)
    assert training.command_line.parse_args(["--recipe", "cnn"]).model == "cnn"
    assert training.command_line.parse_args([]).model == "vit"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "cnn", "--recipe", "budget"], "--recipe budget trains the VIT; the CNN's recipes: cnn"),
        (["--model", "vit", "--recipe", "cnn"], "--recipe cnn trains the CNN; the VIT's recipes: assignment"),
        (["--model", "cnn", "--patch-keep", "0.5"], "--patch-keep does not apply to the CNN"),
        (["--widths", "8,16"], "--widths does not apply to the VIT"),
        (["--model", "cnn", "--widths", "8,x"], "--widths: must be positive whole numbers"),
    ],
)
def test_flags_of_the_other_model_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        training.command_line.parse_args(argv)
    assert message in capsys.readouterr().err


def test_sgd_trains_batchnorm_shifts_faster_with_the_same_decay_per_step():
    args = training.command_line.parse_args(["--model", "cnn", "--lr", "0.5"])
    model = CNN(widths=[8, 16])
    optimizer = build_optimizer(model, OptimizerSettings.of(vars(args)), torch.device("cpu"))
    scheduler = build_scheduler(optimizer, OptimizerSettings.of(vars(args)), steps_per_epoch=10)
    body, shifts = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.SGD) and body["nesterov"] and body["momentum"] == 0.85
    assert {id(p) for p in shifts["params"]} == {
        id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
    }
    assert all(p is not model.stem.weight for p in body["params"])  # frozen: never optimized
    optimizer.step()  # no gradients yet: a no-op, so that the scheduler may step
    scheduler.step()
    assert shifts["lr"] == pytest.approx(64 * body["lr"]) and body["lr"] > 0
    assert shifts["lr"] * shifts["weight_decay"] == pytest.approx(body["lr"] * body["weight_decay"])


def test_cnn_run_exports_a_cnn_that_predicts_as_its_best_checkpoint(shared_folder_data, tmp_path):
    out = tmp_path / "cnn"
    result = train.main(cnn_args(shared_folder_data, out, "--epochs", "2"))
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    loaded = CNN.from_pretrained(out / "export").eval()
    best = torch.load(out / "best.pt", weights_only=True)
    reference = CNN(widths=[8, 16], class_names=loaded.class_names, mean=loaded.mean, std=loaded.std)
    reference.load_state_dict(best["model"])
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), reference.eval()(x))
    # The stem was whitened on the run's own training images, and never trained after.
    data = load_training_data(shared_folder_data, 30, 0)
    whitened = CNN(widths=[8, 16])
    whitened.whiten(to_normalized(data.images[data.train_idx], data.mean, data.std))
    last = torch.load(out / "last.pt", weights_only=True)["model"]["stem.weight"]
    assert torch.allclose(best["model"]["stem.weight"], whitened.stem.weight, atol=1e-5)
    assert torch.equal(last, best["model"]["stem.weight"])
    assert {p.name: p.stat().st_mode & 0o777 for p in (out / "export").iterdir()}["model.safetensors"] == 0o644
    card = (out / "export" / "README.md").read_text()
    assert "# CNN for CIFAR-10" in card and "from cnn_model import CNN" in card
    assert "SGD (Nesterov, momentum 0.85) lr 1.3, batch 32" in card and "widths [8, 16]" in card
    training = json.loads((out / "export" / "training.json").read_text())
    assert training["settings"]["model"] == "cnn" and training["recipe"] == "cnn"
    assert result["command"].startswith("python train.py --recipe cnn --epochs 2")


def test_cnn_resume_gives_the_same_weights_as_an_uninterrupted_run(shared_folder_data, tmp_path, monkeypatch):
    train.main(cnn_args(shared_folder_data, tmp_path / "a", "--epochs", "2"))
    interrupted_then_resumed(cnn_args(shared_folder_data, tmp_path / "b", "--epochs", "2"), monkeypatch)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_new_run_never_replaces_an_existing_one_by_accident(shared_folder_data, tmp_path):
    out = tmp_path / "cnn"
    train.main(cnn_args(shared_folder_data, out, "--epochs", "1"))
    before = (out / "last.pt").read_bytes()
    with pytest.raises(SystemExit, match="holds a run .*--resume to continue it, --overwrite to replace it"):
        train.main(cnn_args(shared_folder_data, out, "--epochs", "1", "--seed", "3"))
    assert (out / "last.pt").read_bytes() == before
    train.main(cnn_args(shared_folder_data, out, "--epochs", "1", "--seed", "3", "--overwrite"))
    assert (out / "last.pt").read_bytes() != before
