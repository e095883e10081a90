"""cnn_model.py: the CNN's shape, initialization, whitening stem, exact class activation
maps (against their definition and the grad-cam package) and Hub round trips."""

import json

import numpy as np
import pytest
import torch

from cnn_model import CNN


@pytest.fixture
def trained_looking_cnn() -> CNN:
    """A small CNN with non-trivial BatchNorm statistics and head, in eval mode."""
    torch.manual_seed(0)
    model = CNN(widths=[8, 16, 16])
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and "stem.weight" not in name:
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.3)
    return model.eval()


def test_shapes_and_parameters():
    model = CNN(widths=[64, 256, 256])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, 256, 3, 3)  # 31 -> 15 -> 7 -> 3
    # stem 24*3*2*2 + 24; per stage 9*cin*cout + 9*cout*cout + 4*cout (BN); head 256*10 + 10
    assert sum(p.numel() for p in model.parameters()) == (312 + 50_944 + 738_304 + 1_180_672 + 2_570)
    with pytest.raises(ValueError, match="widths"):
        CNN(widths=[])
    with pytest.raises(ValueError, match="3 class names given for 10 classes"):
        CNN(class_names=["a", "b", "c"])


def test_stem_and_batchnorm_scales_are_frozen_and_convolutions_start_as_identities():
    model = CNN(widths=[32, 64])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "stem.weight" not in trainable and "stem.bias" in trainable
    assert not any(n.endswith(("norm1.weight", "norm2.weight")) for n in trainable)
    assert {"stages.0.norm1.bias", "head.weight", "head.bias"} <= trainable
    conv = model.stages[1].conv1.weight  # 32 -> 64 channels
    identity = torch.zeros(32, 32, 3, 3)
    identity[range(32), range(32), 1, 1] = 1
    assert torch.equal(conv[:32], identity) and conv[32:].abs().sum() > 0


def test_whitened_stem_gives_patches_unit_second_moments():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(3, 3, generator=g)  # correlated colour channels
    images = torch.einsum("ij,bjhw->bihw", mixing, torch.randn(64, 3, 16, 16, generator=g))
    images = torch.nn.functional.avg_pool2d(images, 3, 1, 1)  # and correlated neighbours
    model = CNN(widths=[8])
    model.whiten(images, eps=1e-9)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, model.stem.weight)  # without the bias
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    assert torch.allclose(half.T @ half / len(half), torch.eye(12), atol=1e-3)
    assert torch.equal(out[:, 12:], -out[:, :12])


def test_cam_averaged_over_positions_plus_bias_is_the_logit(trained_looking_cnn):
    model = trained_looking_cnn
    x = torch.randn(5, 3, 32, 32)
    logits = model(x)
    for k in range(10):
        maps = model.cam(x, k)
        assert maps.shape == (5, 3, 3)
        assert torch.allclose(maps.mean(dim=(1, 2)) + model.head.bias[k], logits[:, k], atol=1e-5)
    chosen = torch.tensor([3, 1, 4, 1, 5])
    per_image = model.cam(x, chosen)
    assert torch.allclose(
        per_image.mean(dim=(1, 2)) + model.head.bias[chosen], logits[torch.arange(5), chosen], atol=1e-5
    )


def test_cam_is_grad_cam_on_the_last_stage_up_to_relu_and_scale(trained_looking_cnn):
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = trained_looking_cnn
    x = torch.randn(4, 3, 32, 32)
    k = 6
    with GradCAM(model=model, target_layers=[model.stages[-1]]) as grad_cam:
        theirs = grad_cam(input_tensor=x, targets=[ClassifierOutputTarget(k)] * len(x))

    def to_unit(m):
        return (m - m.min()) / (m.max() - m.min() + 1e-7)

    for ours, their in zip(model.cam(x, k).detach().relu().numpy(), theirs):
        # grad-cam scales each map to [0, 1], resizes it to the input with OpenCV, and
        # scales the result to [0, 1] once more.
        assert np.allclose(to_unit(cv2.resize(to_unit(ours), (32, 32))), their, atol=1e-4)


def test_save_and_load_round_trip_is_strict(tmp_path, trained_looking_cnn):
    model = trained_looking_cnn
    model.class_names[0], model.mean, model.std = "plane", [0.4, 0.5, 0.6], [0.2, 0.2, 0.3]
    saved = CNN(widths=[8, 16, 16], class_names=model.class_names, mean=model.mean, std=model.std)
    saved.load_state_dict(model.state_dict())
    saved.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["widths"] == [8, 16, 16] and config["class_names"][0] == "plane"
    assert config["mean"] == [0.4, 0.5, 0.6] and config["image_size"] == 32
    loaded = CNN.from_pretrained(tmp_path / "m").eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded(x), saved.eval()(x))
    config["widths"] = [8, 16, 32]  # a config that does not describe the weights
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="size mismatch"):
        CNN.from_pretrained(tmp_path / "m")
    config["widths"] = [8, 16, 16, 16]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="Missing key"):
        CNN.from_pretrained(tmp_path / "m")
