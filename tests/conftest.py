"""Shared fixtures: small class-folder datasets that the tests make themselves, and the app
served from this process with the bundled weights."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
import training.checkpoints
from common.model_folder import read_training

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_folder_dataset(
    root: Path, per_class: int = 12, size: int = 32, seed: int = 0, splits=("train",), suffix: str = ".png"
) -> Path:
    """<root>/<split>/<class>/NNNN.png with images whose mean colour depends on the class,
    so that even a couple of epochs learn something."""
    g = torch.Generator().manual_seed(seed)
    for split in splits:
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            base = torch.tensor([(37 * k) % 256, (91 * k) % 256, (151 * k) % 256])
            for i in range(per_class):
                noise = torch.randint(-40, 41, (size, size, 3), generator=g)
                pixels = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i:04d}{suffix}")
    return root


def unlike_any_class(folder: Path) -> Path:
    """A black PNG (a photo with the lens covered): none of the classes, and scored so by
    each bundled model and by the two together (energies 1.80 and 1.41 against thresholds
    2.53 and 1.88; together -6.62 against about -3.14)."""
    path = folder / "black.png"
    Image.new("RGB", (32, 32)).save(path)
    return path


@pytest.fixture
def folder_data(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "cifar")


@pytest.fixture(scope="session")
def shared_folder_data(tmp_path_factory) -> Path:
    """One read-only dataset with train and test splits for the slower training tests."""
    return make_folder_dataset(tmp_path_factory.mktemp("data") / "cifar", per_class=16, splits=("train", "test"))


# ---------------------------------------------------------------- the device under test


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device that tests taking one run on: the CPU, or VIT_CIFAR_TEST_DEVICE (cuda in
    scripts/gpu_check.sh). Asked for and missing is a failure, never a skip."""
    device = torch.device(os.environ.get("VIT_CIFAR_TEST_DEVICE", "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"VIT_CIFAR_TEST_DEVICE={device} but torch sees no CUDA device")
    return device


# ---------------------------------------------------------------- training runs


def quick_run(data_dir, out, batch_size: int) -> list[str]:
    """What every quick test run shares: the data, the run folder, 30 validation images."""
    return ["--data-dir", str(data_dir), "--out", str(out), "--val-size", "30", "--batch-size", str(batch_size)]


def run_args(data_dir, out, *extra):
    """A quick run: a narrow two-block ViT, so that the suite stays fast on 2 cores."""
    vit = ["--dim", "64", "--depth", "2", "--heads", "4", "--mlp-dim", "128"]
    return [*quick_run(data_dir, out, 64), *vit, "--no-progress", *extra]


def cnn_args(data_dir, out, *extra):
    """A quick CNN run: narrow stages, small batches, so that the suite stays fast."""
    cnn = ["--model", "cnn", "--widths", "8,16", "--warmup-epochs", "1"]
    return [*cnn, *quick_run(data_dir, out, 32), "--no-progress", *extra]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def interrupted_then_resumed(argv: list[str], monkeypatch) -> dict:
    """train.main(argv) killed right after its first epoch's checkpoint, then --resume'd."""
    out = Path(argv[argv.index("--out") + 1])
    real_end = training.checkpoints.RunState.end_epoch

    def stop_after_first_epoch(self, *args):
        real_end(self, *args)
        if len(self.history) == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(training.checkpoints.RunState, "end_epoch", stop_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            train.main(argv)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    return train.main(["--out", str(out), "--resume", "--no-progress"])


# ---------------------------------------------------------------- the app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url():
    """URL of the app (bundled weights/) running in a background thread of this process."""
    import app

    loaded = app.load_model(str(app.BUNDLED_WEIGHTS))
    assert loaded.model is not None, f"the app tests need trained weights in weights/: {loaded.status}"
    cnn_folder = app.BUNDLED_WEIGHTS / "cnn"
    demo = app.build_demo(loaded, cnn=app.load_cnn(str(cnn_folder)), cnn_training=read_training(cnn_folder))
    port = free_port()
    app.serve(demo, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
