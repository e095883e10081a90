"""train.py --init-from: a run that starts from an exported model's weights (fine-tuning)."""

import json
import shutil

import pytest
from conftest import interrupted_then_resumed, read_metrics, run_args

import train


@pytest.fixture(scope="module")
def exported(shared_folder_data, tmp_path_factory):
    """A finished two-epoch run's export, the model the fine-tuning runs start from."""
    out = tmp_path_factory.mktemp("parent") / "run"
    train.main(run_args(shared_folder_data, out, "--epochs", "2"))
    return out / "export"


def test_fine_tune_starts_from_the_weights_and_keeps_their_history(shared_folder_data, exported, tmp_path):
    parent = json.loads((exported / "training.json").read_text())
    # A learning rate too small to move a weight: the first epoch validates the parent's weights.
    result = train.main(
        run_args(shared_folder_data, tmp_path / "ft", "--epochs", "1", "--init-from", str(exported), "--lr", "1e-30")
    )
    (row,) = read_metrics(tmp_path / "ft")
    assert row["val_acc"] == pytest.approx(parent["val_acc"])
    assert result["parent"]["history"] == parent["history"]
    # The parent counts up to its best epoch, the weights this run started from.
    before = parent["best_epoch"]
    assert result["epochs_before"] == before
    assert result["training_minutes"] == pytest.approx(
        sum(h["seconds"] for h in [*parent["history"][:before], row]) / 60, abs=0.06
    )
    card = (tmp_path / "ft" / "export" / "README.md").read_text()
    assert f"| started from | the best epoch ({before} of 2) of a run with the assignment recipe" in card
    assert "--init-from export`" in card  # the folder's own name, no path of this machine's
    assert f"best epoch | 1 of this run's 1 (epoch {before + 1} counting the {before} before it)" in card
    saved = json.loads((tmp_path / "ft" / "export" / "training.json").read_text())
    assert saved["parent"]["val_acc"] == parent["val_acc"] and saved["epochs"] == 1
    assert saved["epochs_before"] == before and saved["started_from"].startswith("the best epoch")
    assert {k: saved["settings"][k] for k in ("init_from", "out")} == {"init_from": "export", "out": "ft"}


def test_a_resumed_fine_tune_keeps_its_parent(shared_folder_data, exported, tmp_path, monkeypatch):
    result = interrupted_then_resumed(
        run_args(shared_folder_data, tmp_path / "ft", "--epochs", "2", "--init-from", str(exported)), monkeypatch
    )
    assert result["parent"]["epochs"] == 2
    assert [r["epoch"] for r in read_metrics(tmp_path / "ft")] == [1, 2]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dim", "32", "--heads", "4"], r"--dim 32 \(the model has 64\)"),
        (["--seed", "3"], "the validation split: 30 images with seed 3, but the model was validated on 30 with seed 0"),
        (["--val-size", "40"], "the validation split: 40 images with seed 0"),
    ],
)
def test_a_model_that_does_not_fit_the_run_is_refused(shared_folder_data, exported, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        train.main(run_args(shared_folder_data, tmp_path / "ft", "--epochs", "1", "--init-from", str(exported), *extra))
    assert not (tmp_path / "ft").exists()


def test_other_images_than_the_models_are_refused(folder_data, exported, tmp_path):
    with pytest.raises(SystemExit, match=r"the training images \(their mean differs"):
        train.main(run_args(folder_data, tmp_path / "ft", "--epochs", "1", "--init-from", str(exported)))


def test_a_folder_without_a_model_or_its_training_record_is_named(shared_folder_data, exported, tmp_path):
    base = run_args(shared_folder_data, tmp_path / "ft", "--epochs", "1", "--init-from")
    with pytest.raises(SystemExit, match="--init-from .*nowhere: .*nowhere does not exist"):
        train.main([*base, str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="--init-from .*empty: .*has no config.json and model.safetensors$"):
        train.main([*base, str(tmp_path / "empty")])
    bare = tmp_path / "bare"
    shutil.copytree(exported, bare)
    (bare / "training.json").unlink()
    with pytest.raises(SystemExit, match="no readable training.json beside the weights"):
        train.main([*base, str(bare)])
    (bare / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(SystemExit, match=f"--init-from {bare}: "):
        train.main([*base, str(bare)])
