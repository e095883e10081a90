"""transfer.py and training/transfer.py: the three runs on the user's own classes, on
photos and tiny models that the tests make (a second or so per run on one core)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import common.model_folder
import space.model_source
import transfer
from cnn_model import CNN
from data import channel_stats
from training.transfer import run_transfer
from training.transfer_photos import Split, read_class_folder, stratified_split
from training.transfer_settings import Settings, TransferError
from training.transfer_source import HEAD, load_source, probe_start, scratch_start
from training.transfer_stages import fixed_by_design, train_stage
from vit_model import ViT

CLASSES = ["cats", "dogs", "mugs"]
# Photos of any shape: each is centre-cropped to a square and resized to 32x32.
SIZES = [(40, 24), (24, 40), (33, 33), (64, 48), (32, 32), (50, 30)]


def make_photos(root: Path, per_class: int = 6, classes=CLASSES) -> Path:
    """root/<class>/NN.jpg of several sizes, each class its own mean colour."""
    g = torch.Generator().manual_seed(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = SIZES[i % len(SIZES)]
            base = torch.tensor([(80 * k) % 256, (150 * k + 60) % 256, (40 * k + 120) % 256])
            pixels = (base + torch.randint(-30, 31, (h, w, 3), generator=g)).clamp(0, 255)
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(root / name / f"{i:02d}.jpg")
    return root


def save_tiny(model: torch.nn.Module, folder: Path) -> Path:
    """A tiny 'CIFAR-trained' model: a few training-mode passes give its batch norm
    running statistics that are not the defaults, then it is saved as train.py exports."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    # As train.py saves them: config.json carries the normalization statistics.
    stats = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    return {
        "vit": save_tiny(
            ViT(patch_size=8, dim=16, depth=1, heads=2, mlp_dim=32, dropout=0.1, drop_path=0.1, **stats), root / "vit"
        ),
        "cnn": save_tiny(CNN(widths=[8, 16], **stats), root / "cnn"),
    }


@pytest.fixture
def photos(tmp_path) -> Path:
    return make_photos(tmp_path / "photos")


def settings(photos: Path, out: Path, kind: str, source: Path, **changes) -> Settings:
    return Settings(
        **{"data_dir": photos, "out": out, "model": kind, "source": source, "epochs": 1, "batch_size": 8, **changes}
    )


def split_of(photos: Path) -> Split:
    folder = read_class_folder(photos, 32)
    train, val = stratified_split(folder.labels, 0.2, 0)
    return Split(folder.images[train], folder.labels[train], folder.images[val], folder.labels[val], folder.class_names)


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# ---------------------------------------------------------------- probe and fine-tune


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_the_probe_trains_the_new_head_only_and_the_fine_tune_the_backbone(kind, sources, photos, tmp_path):
    source = load_source(sources[kind], kind)
    model = probe_start(source, CLASSES, seed=0)
    assert (model.mean, model.std) == (source.model.mean, source.model.std)  # the source's normalization
    fixed = fixed_by_design(model)
    split = split_of(photos)
    scratch = scratch_start(source, CLASSES, split.train_images, seed=0)
    assert (scratch.mean, scratch.std) == channel_stats(split.train_images)  # the new images' own
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_stage(model, "probe", split, settings(photos, tmp_path, kind, sources[kind], epochs=2), fixed)
    probed = {k: v.clone() for k, v in model.state_dict().items()}
    # Every tensor but the new head, batch-norm running statistics and counters included.
    assert changed(start, probed) == set(HEAD)
    assert all(torch.equal(probed[k], source.model.state_dict()[k]) for k in probed if k not in HEAD)

    train_stage(model, "finetune", split, settings(photos, tmp_path, kind, sources[kind]), fixed)
    tuned = model.state_dict()
    moved = changed(probed, tuned)
    if kind == "cnn":
        assert {"stages.0.conv1.weight", "stages.1.conv2.weight", "head.weight"} <= moved
        # Batch norm in eval mode: its statistics are CIFAR's still; the stem and the scales stay fixed.
        assert not {k for k in moved if "running" in k or "num_batches" in k}
        assert not moved & ({"stem.weight"} | {k for k in tuned if k.endswith("norm1.weight")})
    else:
        assert {
            "patch_embed.weight",
            "blocks.0.attn.in_proj_weight",
            "blocks.0.norm1.weight",
            "pos_embed",
            "head.weight",
        } <= moved


def test_the_probe_sees_the_features_inference_computes(sources, photos, tmp_path):
    """The ViT's frozen backbone runs in eval mode: its dropout and drop path are off, so
    two probe runs with different batch orders start from the same features."""
    source = load_source(sources["vit"], "vit")
    model = probe_start(source, CLASSES, seed=0)
    seen = []
    model.norm.register_forward_hook(lambda module, args, out: seen.append(module.training))
    train_stage(
        model, "probe", split_of(photos), settings(photos, tmp_path, "vit", sources["vit"]), fixed_by_design(model)
    )
    assert seen and not any(seen)


# ---------------------------------------------------------------- the split


def test_the_split_is_seeded_and_stratified():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    train, val = stratified_split(labels, 0.2, seed=3)
    again = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert not torch.equal(val, stratified_split(labels, 0.2, seed=4)[1])
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[val]).tolist() == [2, 1, 1]  # a fifth of each, at least one
    assert torch.bincount(labels[stratified_split(labels, 0.5, seed=3)[1]]).tolist() == [5, 4, 2]


def test_photos_of_any_size_are_read_square_and_bad_files_are_counted(tmp_path):
    photos = make_photos(tmp_path / "p" / "train")  # DIR/train/<class>/ is accepted too
    (photos / "cats" / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "dogs" / "notes.txt").write_text("a note")
    folder = read_class_folder(tmp_path / "p", 32, log=lambda line: None)
    assert folder.images.shape == (18, 3, 32, 32) and folder.images.dtype == torch.uint8
    assert folder.class_names == CLASSES and torch.bincount(folder.labels).tolist() == [6, 6, 6]
    assert [p.name for p, _ in folder.skipped] == ["broken.jpg"] and folder.ignored == 1


# ---------------------------------------------------------------- the whole transfer and its export


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_the_export_loads_strictly_with_the_new_classes(kind, sources, photos, tmp_path):
    out = tmp_path / "out"
    result = run_transfer(settings(photos, out, kind, sources[kind], epochs=2), log=lambda line: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(result)) and set(saved["runs"]) == {"scratch", "probe", "finetune"}
    assert all(len(r["history"]) == 2 and 0 <= r["best_val_acc"] <= 1 for r in saved["runs"].values())
    assert saved["runs"]["probe"]["trainable_parameters"] == 3 * (16 + 1)  # the new head only
    assert (out / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    export = out / "export"
    config = json.loads((export / "config.json").read_text())
    common.model_folder.check_config(config)
    if kind == "vit":  # through the loader app.py uses, which loads strictly
        model = space.model_source.load_model(str(export), Path("no-bundled"), "NO_ENV").model
        assert isinstance(model, ViT)
    else:  # this branch's app serves ViT folders only; the CNN loads strictly by itself
        model = CNN.from_pretrained(export)
    assert model.class_names == CLASSES and model.head.out_features == len(CLASSES)
    best = saved["runs"][saved["best"]]
    assert model.mean == pytest.approx(config["mean"])
    if saved["best"] != "scratch":  # transferred weights keep the source's normalization
        assert model.mean == pytest.approx(load_source(sources[kind], kind).model.mean)
    training = common.model_folder.read_training(export)
    assert training["class_names"] == CLASSES and len(training["per_class_acc"]) == 3
    assert training["val_acc"] == best["best_val_acc"] and training["val_images"] == 3


def test_the_command_runs_and_refuses_to_write_over_a_run(sources, photos, tmp_path, capsys):
    (photos / "mugs" / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "run"
    argv = [
        "--data-dir",
        str(photos),
        "--out",
        str(out),
        "--model",
        "vit",
        "--from",
        str(sources["vit"]),
        "--epochs",
        "1",
        "--batch-size",
        "8",
    ]
    assert transfer.main(argv) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable file (broken.png" in printed
    assert "run 3/3: fine-tune" in printed and "left in this run" in printed and "<- exported" in printed
    assert transfer.main(argv) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: --out {out} already holds a run")
    assert transfer.main([*argv, "--overwrite"]) == 0


# ---------------------------------------------------------------- refusals


def refusal(argv: list[str], capsys) -> str:
    assert transfer.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_inputs_are_refused_with_the_reason(sources, photos, tmp_path, capsys):
    common = ["--out", str(tmp_path / "out"), "--model", "cnn", "--from", str(sources["cnn"])]
    assert "does not exist" in refusal(["--data-dir", str(tmp_path / "nowhere"), *common], capsys)
    one = make_photos(tmp_path / "one", classes=["cats"])
    assert "at least two classes" in refusal(["--data-dir", str(one), *common], capsys)
    assert f"pass its parent {one}" in refusal(["--data-dir", str(one / "cats"), *common], capsys)
    few = make_photos(tmp_path / "few")
    for extra in sorted((few / "dogs").iterdir())[3:]:
        extra.unlink()
    (few / "dogs" / "bad.jpg").write_bytes(b"")
    message = refusal(["--data-dir", str(few), *common], capsys)
    assert "dogs/ has 3" in message and "(1 unreadable file skipped)" in message
    data = ["--data-dir", str(photos), "--out", str(tmp_path / "out")]
    assert "is not a model folder" in refusal([*data, "--from", str(photos)], capsys)
    run = tmp_path / "a-run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "config.json").write_text("{}")
    assert f"did you mean {run / 'export'}?" in refusal([*data, "--from", str(run)], capsys)
    assert "holds a CNN, not a ViT: pass --model cnn" in refusal(
        [*data, "--model", "vit", "--from", str(sources["cnn"])], capsys
    )
    assert "does not exist" in refusal([*data, "--from", str(tmp_path / "no-model")], capsys)
    with pytest.raises(SystemExit) as exit_:
        transfer.main([*data, "--val-fraction", "1.5"])
    assert exit_.value.code == 2 and "fraction between 0 and 1" in capsys.readouterr().err


def test_a_broken_source_model_is_refused(sources, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    config = (sources["vit"] / "config.json").read_text()
    (broken / "config.json").write_text(config.replace('"dim": 16', '"dim": 32'))
    (broken / "model.safetensors").write_bytes((sources["vit"] / "model.safetensors").read_bytes())
    with pytest.raises(TransferError, match="cannot be loaded"):
        load_source(broken, "vit")
