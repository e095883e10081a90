"""tools/draw_figures.py: the docs' figures."""

import shutil

import torch
from conftest import CLASSES

import tools.draw_figures


def test_figures_are_written(tmp_path):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    tools.draw_figures.save_augmentation_grid(images, [0, 1, 2], CLASSES, [0.5] * 3, [0.25] * 3, tmp_path / "aug.png")
    tools.draw_figures.save_patch_figure(images[0], 8, tmp_path / "patches.png")
    for name in ("aug.png", "patches.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size > 5000


def test_the_command_draws_every_figure_into_its_folder(folder_data, tmp_path, capsys):
    tools.draw_figures.main(["--data-dir", str(folder_data), "--val-size", "20", "--out", str(tmp_path)])
    drawn = ["augmentations.png", "patches.png"] + (["model_graph.png"] if shutil.which("dot") else [])
    for name in drawn:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {', '.join(drawn)}" in capsys.readouterr().out
