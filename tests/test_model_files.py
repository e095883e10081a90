"""model_files.py: which model the app loads, and the models it refuses to serve."""

import json
import math
import shutil
from pathlib import Path

import pytest

import common.model_folder
import space.model_source
from vit_model import ViT

BUNDLED = Path(__file__).resolve().parent.parent / "weights"
ENV = "VIT_CIFAR_MODEL"


def load(source, bundled=BUNDLED):
    return space.model_source.load_model(str(source), bundled, ENV)


def tiny_folder(root: Path, **config) -> Path:
    """A small saved model, then config.json edited: key=None deletes a key."""
    model = ViT(
        image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=16, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2]
    )
    model.save_pretrained(root)
    saved = json.loads((root / "config.json").read_text())
    for key, value in config.items():
        saved.pop(key) if value is None else saved.__setitem__(key, value)
    (root / "config.json").write_text(json.dumps(saved))
    return root


def test_source_cli_then_environment_then_bundled(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert space.model_source.source_from(None, BUNDLED, ENV) == str(BUNDLED)
    monkeypatch.setenv(ENV, "someone/vit")
    assert space.model_source.source_from(None, BUNDLED, ENV) == "someone/vit"
    assert space.model_source.source_from("/models/mine", BUNDLED, ENV) == "/models/mine"


def test_bundled_weights_load_with_their_training_record():
    loaded = load(BUNDLED)
    assert loaded.status == "Model: the bundled `weights/` folder."
    assert not loaded.model.training and loaded.model.image_size == 32
    record = json.loads((BUNDLED / "training.json").read_text())
    assert loaded.training["val_acc"] == record["val_acc"] and loaded.folder == BUNDLED


def test_a_good_small_model_loads(tmp_path):
    loaded = load(tiny_folder(tmp_path / "m"))
    assert loaded.model is not None and loaded.model.mean == pytest.approx([0.5, 0.4, 0.3])
    assert loaded.training == {}  # no training.json: the page says "unknown"


@pytest.mark.parametrize(
    "config, reason",
    [
        ({"mean": None}, "config.json has no `mean` list"),
        ({"std": None}, "config.json has no `std` list"),
        ({"std": [0.2, 0.0, 0.2]}, "`std` must be above 0"),
        ({"std": [0.2, -1, 0.2]}, "`std` must be above 0"),
        ({"mean": [0.5, 0.5]}, "`mean` has 2 values for 3 channels"),
        ({"mean": [0.5, "x", 0.5]}, "`mean` must hold finite numbers"),
        ({"depth": 10**6}, "`depth` is 1000000; this app serves 1 to 48"),
        ({"dim": 2048, "depth": 48, "mlp_dim": 8192}, "more than the 200M this app serves"),
        ({"image_size": 10}, "sizes do not fit together"),
        ({"in_channels": 1}, "`in_channels` is 1"),
        ({"class_names": ["a", "b"]}, "`class_names` must be 10 names"),
        ({"temperature": 0}, "`temperature` must be a finite number above 0"),
        ({"temperature": "1"}, "`temperature` must be a finite number above 0"),
        ({"known_threshold": "high"}, "`known_threshold` must be a finite number or null"),
        ({"widths": [10**6]}, "`widths` must be 1 to 8 whole numbers from 1 to 2048"),
        (
            {"image_size": 512, "patch_size": 1},
            "262145 tokens (512x512 patches and the class token), more than the 1025 this app serves",
        ),
        (
            {"image_size": 128, "patch_size": 4, "dim": 32, "heads": 32, "depth": 48},
            "attention maps of 6455 MB for one image",
        ),
    ],
)
def test_configs_that_cannot_be_right_are_refused(tmp_path, config, reason):
    loaded = load(tiny_folder(tmp_path / "m", **config))
    assert loaded.model is None
    assert "No trained model is loaded" in loaded.status and reason in loaded.status


def test_non_finite_numbers_in_the_config_are_refused(tmp_path):
    folder = tiny_folder(tmp_path / "m")
    text = (folder / "config.json").read_text().replace('"std": [0.2', '"std": [NaN')
    (folder / "config.json").write_text(text)
    assert math.isnan(json.loads(text)["std"][0])
    loaded = load(folder)
    assert loaded.model is None and "`std` must hold finite numbers" in loaded.status


@pytest.mark.parametrize("name, value", [("head.bias", math.inf), ("blocks.0.norm1.weight", math.nan)])
def test_weights_with_nan_or_inf_are_refused(tmp_path, name, value):
    from safetensors.torch import load_file, save_file

    folder = tiny_folder(tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    tensors[name] = tensors[name].clone().fill_(value)
    save_file(tensors, folder / "model.safetensors")
    loaded = load(folder)
    assert loaded.model is None and f"NaN or infinite values ({name}" in loaded.status


def test_the_bundled_cnn_loads_as_a_cnn_and_each_kind_only_as_itself(tmp_path):
    from cnn_model import CNN

    cnn = common.model_folder.load_folder(BUNDLED / "cnn", CNN)
    assert isinstance(cnn, CNN) and not cnn.training
    assert 0 < cnn.temperature and cnn.known_threshold is not None  # calibrated on validation
    with pytest.raises(common.model_folder.ModelError, match="holds a CNN, not a ViT"):
        common.model_folder.load_folder(BUNDLED / "cnn")
    with pytest.raises(common.model_folder.ModelError, match="holds a ViT, not a CNN"):
        common.model_folder.load_folder(tiny_folder(tmp_path / "m"), CNN)


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_a_folder_without_weights_loads_no_model(tmp_path, folder):
    (tmp_path / "empty").mkdir()
    loaded = load(tmp_path / folder)
    assert loaded.model is None
    assert "No trained model is loaded" in loaded.status and "`weights/`" in loaded.status
    assert ENV in loaded.status


def test_unreachable_hub_falls_back_to_the_bundled_weights(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = load("someone/no-such-vit")
    assert loaded.model is not None
    assert loaded.status.startswith(
        "Model: the bundled `weights/` folder, because the app could not load `someone/no-such-vit` from the Hub"
    )
    loaded = load("someone/no-such-vit", bundled=tmp_path / "nothing")
    assert loaded.model is None and "the bundled `nothing/` failed too" in loaded.status


def test_a_mistyped_folder_is_not_taken_for_a_hub_repo(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    loaded = load("runs/exp1")  # runs/ exists, so this names a folder, not a repo
    assert loaded.model is None and "no usable weights in `runs/exp1`" in loaded.status
    assert "runs/exp1 does not exist" in loaded.status and "from the Hub" not in loaded.status
    # A training run's folder instead of its export/: the page names the folder meant.
    shutil.copytree(BUNDLED, tmp_path / "runs" / "exp1" / "export")
    assert "did you mean runs/exp1/export?" in load("runs/exp1").status
    assert load("someone/vit").model is not None  # a repo id still falls back


def test_a_hub_snapshot_is_checked_like_a_folder(monkeypatch, tmp_path):
    broken = tiny_folder(tmp_path / "hub", std=[0, 0, 0])
    monkeypatch.setattr(space.model_source, "snapshot_download", lambda repo, allow_patterns: str(broken))
    loaded = load("someone/broken-vit")
    assert loaded.model is not None and loaded.folder == BUNDLED  # the bundled model instead
    assert "could not load `someone/broken-vit` from the Hub: config.json `std` must be above 0" in loaded.status
    shutil.copy(BUNDLED / "training.json", broken / "training.json")
    good = tiny_folder(tmp_path / "good")
    shutil.copy(BUNDLED / "training.json", good / "training.json")
    monkeypatch.setattr(space.model_source, "snapshot_download", lambda repo, allow_patterns: str(good))
    loaded = load("someone/good-vit")
    assert loaded.status == "Model: `someone/good-vit` from the Hugging Face Hub."
    assert loaded.training["recipe"] and loaded.folder == good


@pytest.mark.parametrize("text", ['{"val_acc": 1.5}', '{"val_acc": NaN}', '{"val_acc": true}', "not json", "[1]"])
def test_a_training_record_that_cannot_be_right_is_not_shown(tmp_path, text):
    (tmp_path / "training.json").write_text(text)
    assert "val_acc" not in common.model_folder.read_training(tmp_path)


@pytest.mark.parametrize(
    "record",
    [
        {"val_acc_flip_tta": float("inf")},
        {"per_class_acc": [0.5, "x"], "class_names": ["a", "b"]},
        {"per_class_acc": [0.5, 0.6], "class_names": ["a"]},
        {"per_class_acc": [0.5, 2.0], "class_names": ["a", "b"]},
    ],
)
def test_other_figures_that_cannot_be_right_are_dropped(tmp_path, record):
    (tmp_path / "training.json").write_text(json.dumps({"val_acc": 0.5, **record}))
    kept = common.model_folder.read_training(tmp_path)
    assert kept["val_acc"] == 0.5 and not set(record) - {"class_names"} & set(kept)


@pytest.mark.parametrize(
    "record, kept",
    [
        ('{"recipe": 5, "epochs": 3}', {"epochs": 3}),
        ('{"training_minutes": NaN, "machine": "cpu"}', {"machine": "cpu"}),
        ('{"val_images": Infinity, "val_acc": 0.5}', {"val_acc": 0.5}),
        ('{"epochs": 0, "val_images": 2.5, "training_minutes": -3, "split_seed": -1}', {}),
        ('{"epochs": true, "recipe": "", "data": null, "machine": ["x"], "split_seed": 0}', {"split_seed": 0}),
        ('{"class_names": [1, 2], "per_class_acc": [0.5, 0.5]}', {}),
        (
            '{"class_names": ["a", "b"], "per_class_acc": [0.5, 0.5], "note": "x"}',
            {"class_names": ["a", "b"], "per_class_acc": [0.5, 0.5]},
        ),
    ],
)
def test_training_fields_of_the_wrong_type_or_value_are_dropped(tmp_path, record, kept):
    (tmp_path / "training.json").write_text(record)
    assert common.model_folder.read_training(tmp_path) == kept
