import torch
from conftest import CLASSES

import data_figures


def test_figures_are_written(tmp_path):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    data_figures.save_augmentation_grid(images, [0, 1, 2], CLASSES, [0.5] * 3, [0.25] * 3, tmp_path / "aug.png")
    data_figures.save_patch_figure(images[0], 8, tmp_path / "patches.png")
    for name in ("aug.png", "patches.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size > 5000
