"""device_augment.py: the batched augmentations on the training device, checked against
torchvision's per-image transforms."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

import data
import training.augment


def test_crop_boxes_follow_torchvision_distribution():
    n = 20000
    g = torch.Generator().manual_seed(0)
    top, left, h, w = training.augment.random_resized_crop_boxes(n, 32, 32, g)
    torch.manual_seed(0)
    ref = torch.tensor(
        [v2.RandomResizedCrop.get_params(torch.empty(3, 32, 32), [0.8, 1.0], [0.9, 1.1]) for _ in range(n)]
    ).T
    for ours, theirs in [
        (h * w / 1024.0, ref[2] * ref[3] / 1024.0),
        (w / h.float(), ref[3] / ref[2].float()),
        (top.float(), ref[0].float()),
        (left.float(), ref[1].float()),
    ]:
        assert ours.mean().item() == pytest.approx(theirs.mean().item(), abs=0.01 + 0.01 * theirs.std().item())
        assert ours.std().item() == pytest.approx(theirs.std().item(), rel=0.05, abs=0.01)
    assert (top + h <= 32).all() and (left + w <= 32).all() and (top >= 0).all() and (left >= 0).all()
    assert (h * w >= 0.8 * 1024 - 64).all()


def test_device_resized_crop_equals_torchvision_for_the_same_box(monkeypatch):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    boxes = (
        torch.tensor([0, 1, 2, 0, 3, 1]),
        torch.tensor([0, 2, 1, 3, 0, 2]),
        torch.tensor([32, 30, 29, 31, 28, 30]),
        torch.tensor([32, 29, 31, 28, 29, 30]),
    )
    monkeypatch.setattr(training.augment, "random_resized_crop_boxes", lambda *a, **k: boxes)
    device_augment = training.augment.DeviceAugment([0.0] * 3, [1.0] * 3, flip_p=0.0)
    out = device_augment(images, torch.Generator().manual_seed(0))
    for i in range(len(images)):
        ref = TF.resized_crop(images[i].float(), *(int(b[i]) for b in boxes), size=[32, 32], antialias=False) / 255
        assert torch.allclose(out[i], ref, atol=1e-5), i
    flipped = training.augment.DeviceAugment([0.0] * 3, [1.0] * 3, flip_p=1.0)(images, torch.Generator())
    for i in range(len(images)):
        ref = (
            TF.resized_crop(images[i].flip(-1).float(), *(int(b[i]) for b in boxes), size=[32, 32], antialias=False)
            / 255
        )
        assert torch.allclose(flipped[i], ref, atol=1e-5), i


def test_device_augment_pixel_statistics_match_torchvision():
    # A horizontal ramp: the mean column profile shows both the crop and the flip rate.
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8)
    images = ramp.view(1, 1, 1, 32).expand(4000, 3, 32, 32).contiguous()
    images[:, 1] = images[:, 1].transpose(-1, -2)  # green ramps vertically
    ours = training.augment.DeviceAugment([0.0] * 3, [1.0] * 3)(images, torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    reference = data.train_transform([0.0] * 3, [1.0] * 3)
    theirs = torch.stack([reference(img) for img in images])
    for c in range(3):
        assert torch.allclose(ours[:, c].mean(0), theirs[:, c].mean(0), atol=0.015)
        assert torch.allclose(ours[:, c].std(0), theirs[:, c].std(0), atol=0.015)
    # The share of flipped images: red's first column is bright only when flipped.
    assert (ours[:, 0, 16, 0] > 0.5).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_device_augment_draws_differ_per_image_and_normalize():
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(64, -1, -1, -1)
    out = training.augment.DeviceAugment([0.5] * 3, [0.25] * 3)(images, torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) > 32
    assert out.min() >= -2 - 1e-5 and out.max() <= 2 + 1e-5


# ---------------------------------------------------------------- flip + translate (the CNN recipe)


def window_of(padded: torch.Tensor, out: torch.Tensor, pad: int) -> tuple[int, int, bool] | None:
    """The (dy, dx, flipped) whose window of the padded image is `out`, if any."""
    size = out.shape[-1]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, dy : dy + size, dx : dx + size]
            for flipped in (False, True):
                if torch.equal(window.flip(-1) if flipped else window, out):
                    return dy, dx, flipped
    return None


def test_translate_shows_each_image_shifted_over_a_reflected_border_and_maybe_mirrored():
    images = torch.randint(0, 256, (3000, 3, 8, 8), dtype=torch.uint8)
    out = training.augment.DeviceTranslate([0.0] * 3, [1 / 255] * 3, pad=2)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.float32
    padded = torch.nn.functional.pad(images.float(), (2,) * 4, mode="reflect")
    found = [window_of(p, o.round(), 2) for p, o in zip(padded, out)]
    assert all(f is not None for f in found)
    shifts = torch.tensor([(dy, dx) for dy, dx, _ in found]).float()
    # Each shift uniform over -2..2 (0..4 here), independently per image; flips half the time.
    assert shifts.mean(0).tolist() == pytest.approx([2.0, 2.0], abs=0.1)
    assert shifts.var(0).tolist() == pytest.approx([2.0, 2.0], abs=0.2)
    assert sum(f for _, _, f in found) / len(found) == pytest.approx(0.5, abs=0.03)


def test_translate_reads_what_torchvision_reflect_crop_reads_and_normalizes():
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(0)
    reference = v2.RandomCrop(32, padding=2, padding_mode="reflect")
    seen = {tuple(reference(image[0]).flatten()[:64].tolist()) for _ in range(400)}
    ours = training.augment.DeviceTranslate([0.5] * 3, [0.25] * 3, pad=2, flip_p=0.0)(
        image.expand(400, -1, -1, -1), torch.Generator().manual_seed(3)
    )
    pixels = ((ours * 0.25 + 0.5) * 255).round()
    assert {tuple(p.flatten()[:64].tolist()) for p in pixels} == seen  # the same 25 windows
