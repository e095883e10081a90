"""tools/deletion_test.py: the deletion curve, and a map that points at what the model uses
scoring a lower area than one that does not."""

import torch

from tools.deletion_test import CELLS, STEPS, deletion_curve, ranked, to_cells


class CornerModel(torch.nn.Module):
    """Two classes decided by the top-left 4x4 cell alone."""

    temperature = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, :, :4, :4].mean(dim=(1, 2, 3))
        return torch.stack([8 * corner, -8 * corner], 1)


def test_blanking_the_cell_the_model_reads_first_drops_its_probability_first():
    x = torch.ones(4, 3, 32, 32)
    right = torch.zeros(4, CELLS * CELLS)
    right[:, 0] = 1.0
    first, last = ranked(right), ranked(-right)  # the corner first, or last
    fast, slow = deletion_curve(CornerModel(), x, first), deletion_curve(CornerModel(), x, last)
    assert len(fast) == STEPS + 1 and fast[0] == slow[0] == torch.sigmoid(torch.tensor(16.0))
    assert fast[1] == 0.5 and slow[-2] > 0.99 and slow[-1] == 0.5  # blank: 0 after normalization
    assert fast.mean() < slow.mean()


def test_maps_of_any_size_become_one_score_per_cell():
    cam = torch.zeros(1, 3, 3)
    cam[0, 0, 0] = 1.0  # the CNN's top-left third
    scores = to_cells(cam)
    assert scores.shape == (1, CELLS * CELLS)
    assert int(scores.argmax()) == 0 and scores[0, -1] == 0
