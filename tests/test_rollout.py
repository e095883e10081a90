"""Attention rollout on hand-computed matrices and on real (small, untrained) ViTs."""

import pytest
import torch

from rollout import (
    attention_rollout,
    block_attention_map,
    class_token_map,
    discard_weakest,
    fuse_heads,
    gradient_rollout,
    model_rollout,
    scale_to_unit,
)
from space.pictures import attention_overlay, upsample_maps
from vit_model import ViT


def heads(*matrices):
    """(1, heads, T, T) from per-head T x T nested lists."""
    return torch.tensor(matrices, dtype=torch.float32)[None]


def random_attention(b, h, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, t, t, generator=g).softmax(dim=-1)


# Two non-commuting 2-token attentions, with A + I renormalized by rows worked out by hand:
#   A1 = [[1, 0], [1, 0]] -> [[1, 0], [.5, .5]]      A2 = [[0, 1], [0, 1]] -> [[.5, .5], [0, 1]]
A1, A1_HAT = heads([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.5, 0.5]])
A2, A2_HAT = heads([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([[0.5, 0.5], [0.0, 1.0]])


def test_one_block_is_its_residual_attention_once():
    assert torch.allclose(attention_rollout([A1])[0], A1_HAT)


def test_newest_block_multiplies_on_the_left():
    # A2_HAT @ A1_HAT = [[.75, .25], [.5, .5]]; the other order is [[.5, .5], [.25, .75]].
    expected = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    assert torch.allclose(attention_rollout([A1, A2])[0], expected)
    assert torch.allclose(attention_rollout([A2, A1])[0], A1_HAT @ A2_HAT)
    assert not torch.allclose(expected, A1_HAT @ A2_HAT)


def test_rows_are_normalized_not_columns():
    # Row sums of A1 + I are (2, 2) but column sums (3, 1): a column normalization
    # would give [[2/3, 0], [1/3, 1]].
    result = attention_rollout([A1])[0]
    assert torch.allclose(result.sum(dim=-1), torch.ones(2))
    assert not torch.allclose(result.sum(dim=0), torch.ones(2))


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5, 0.9])
def test_rows_stay_stochastic_over_many_blocks(fusion, discard):
    attentions = [random_attention(3, 4, 17, seed=s) for s in range(6)]
    result = attention_rollout(attentions, fusion, discard)
    assert result.shape == (3, 17, 17)
    assert (result >= 0).all()
    assert torch.allclose(result.sum(dim=-1), torch.ones(3, 17), atol=1e-5)


def test_identity_attention_gives_a_uniform_map():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    result = attention_rollout([eye] * 4)
    assert torch.equal(result, torch.eye(5).expand(2, 5, 5))
    shown = scale_to_unit(class_token_map(result))
    assert torch.equal(shown, torch.zeros(2, 2, 2))  # uniform, and no NaN from 0 / 0


def test_uniform_attention_gives_a_uniform_map():
    uniform = torch.full((1, 2, 10, 10), 0.1)
    grid = class_token_map(attention_rollout([uniform] * 3))[0]
    assert grid.shape == (3, 3)
    assert torch.allclose(grid, grid[0, 0].expand(3, 3)) and grid[0, 0] > 0


def test_head_fusion():
    a = heads([[0.2, 0.8], [0.6, 0.4]], [[0.4, 0.6], [0.2, 0.8]])
    assert torch.allclose(fuse_heads(a, "mean"), torch.tensor([[[0.3, 0.7], [0.4, 0.6]]]))
    assert torch.allclose(fuse_heads(a, "max"), torch.tensor([[[0.4, 0.8], [0.6, 0.8]]]))
    assert torch.allclose(fuse_heads(a, "min"), torch.tensor([[[0.2, 0.6], [0.2, 0.4]]]))
    with pytest.raises(ValueError, match="head fusion"):
        fuse_heads(a, "median")


def test_discard_ratio_drops_weakest_patch_entries_only():
    # Token 0 is the class token. Its entries (row 0, column 0) are the smallest here,
    # yet only the patch-to-patch block (rows and columns 1, 2) may lose entries.
    a = torch.tensor([[[0.01, 0.02, 0.97], [0.03, 0.50, 0.47], [0.04, 0.10, 0.86]]])
    half = discard_weakest(a, 0.5)  # 2 of the 4 patch entries: 0.10 and 0.47
    expected = a.clone()
    expected[0, 2, 1] = expected[0, 1, 2] = 0.0
    assert torch.equal(half, expected)
    quarter = discard_weakest(a, 0.25)
    assert torch.equal(quarter[0, 2, 1], torch.tensor(0.0)) and quarter[0, 1, 2] == 0.47
    assert torch.equal(discard_weakest(a, 0.0), a)
    assert torch.equal(a[0, 2, 1], torch.tensor(0.10))  # the input is left alone
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="discard ratio"):
            discard_weakest(a, bad)


def test_discard_applies_per_image_of_a_batch():
    a = random_attention(2, 1, 5)[:, 0]
    both = discard_weakest(a, 0.5)
    for i in range(2):
        assert torch.equal(both[i], discard_weakest(a[i : i + 1], 0.5)[0])
        assert int((both[i, 1:, 1:] == 0).sum()) == 8


def test_discard_changes_the_rollout():
    attentions = [random_attention(1, 2, 5, seed=s) for s in range(3)]
    assert not torch.allclose(attention_rollout(attentions, discard_ratio=0.9), attention_rollout(attentions))


def test_batch_equals_one_image_at_a_time():
    attentions = [random_attention(4, 2, 10, seed=s) for s in range(3)]
    batched = attention_rollout(attentions, "max", 0.3)
    for i in range(4):
        single = attention_rollout([a[i : i + 1] for a in attentions], "max", 0.3)
        assert torch.allclose(batched[i], single[0], atol=1e-6)


def test_missing_attention_maps_fail_loudly():
    a = random_attention(1, 2, 5)
    with pytest.raises(ValueError, match="return_attention=True"):
        attention_rollout([a, None, a])
    with pytest.raises(ValueError, match="one attention map per block"):
        attention_rollout([a, a], num_blocks=3)
    with pytest.raises(ValueError, match="one attention map per block"):
        attention_rollout([])


def test_block_attention_map_is_the_class_row_of_one_head():
    a = random_attention(2, 3, 5)
    attentions = [a, a.flip(1)]
    assert torch.equal(block_attention_map(attentions, 0, 2), a[:, 2, 0, 1:].reshape(2, 2, 2))
    assert torch.equal(block_attention_map(attentions, 1, 0), a[:, 2, 0, 1:].reshape(2, 2, 2))
    assert torch.allclose(block_attention_map(attentions, 0, "mean"), a.mean(1)[:, 0, 1:].reshape(2, 2, 2))
    with pytest.raises(ValueError, match="head 3"):
        block_attention_map(attentions, 0, 3)
    with pytest.raises(ValueError, match="block 2"):
        block_attention_map(attentions, 2, 0)


def test_class_token_map_needs_a_square_grid():
    with pytest.raises(ValueError, match="square"):
        class_token_map(torch.ones(1, 6, 6))


@pytest.mark.parametrize("patch_size", [1, 2, 4, 8, 16, 32])
def test_real_model_for_each_patch_size(patch_size):
    torch.manual_seed(patch_size)
    model = ViT(patch_size=patch_size, dim=32, depth=3, heads=2, mlp_dim=64, dropout=0.5)
    x = torch.randn(2, 3, 32, 32)
    grid = 32 // patch_size
    model.train()  # model_rollout must switch to eval: dropout off, repeatable maps
    logits, maps, attentions = model_rollout(model, x, "mean", 0.5)
    assert logits.shape == (2, 10) and maps.shape == (2, grid, grid)
    assert len(attentions) == 3 and attentions[0].shape == (2, 2, grid * grid + 1, grid * grid + 1)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert (maps.flatten(1).sum(1) <= 1 + 1e-5).all()  # part of a stochastic row
    assert torch.equal(maps, model_rollout(model, x, "mean", 0.5)[1])
    assert model.training  # left as it was given
    assert torch.allclose(logits, model.eval()(x))  # the eval-mode logits
    full = attention_rollout(attentions, "mean", 0.5)
    assert torch.allclose(full.sum(-1), torch.ones(2, grid * grid + 1), atol=1e-5)
    assert block_attention_map(attentions, 2, 1).shape == (2, grid, grid)


def test_rollout_of_a_model_run_without_attention_fails():
    model = ViT(dim=32, depth=2, heads=2, mlp_dim=64).eval()
    x = torch.randn(1, 3, 32, 32)
    _, weights = model.blocks[0](torch.zeros(1, 65, 32))
    assert weights is None  # what the fused kernel hands back
    attentions = [weights] * 2
    with pytest.raises(ValueError, match="return_attention=True"):
        attention_rollout(attentions, num_blocks=2)
    _, some = model(x, return_attention=True)
    with pytest.raises(ValueError, match=r"\(2\), got 1 maps"):
        attention_rollout(some[:1], num_blocks=2)


def test_upsampling_and_overlay():
    heat = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    up = upsample_maps(heat[None], 32)[0]
    assert up.shape == (32, 32) and up[:, :8].max() == 0 and up[:, 24:].min() == 1
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    out = attention_overlay(image, heat, size=64)
    assert out.shape == (64, 64, 3) and out.dtype.name == "uint8"
    # The image shows through where the map is 0; the heat colour covers it where it is 1.
    assert abs(int(out[0, 0, 0]) - 128) <= 1 and abs(int(out[0, -1, 0]) - 128) > 20


def test_gradient_rollout_of_one_block_is_the_positive_gradient_weighted_attention():
    torch.manual_seed(0)
    model = ViT(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=16).eval()
    x = torch.randn(3, 3, 8, 8)
    maps, first = gradient_rollout(model, x, class_index=4)
    logits, (attention,) = model(x, return_attention=True)
    (grad,) = torch.autograd.grad(logits[:, 4].sum(), attention)
    expected = (grad * attention).clamp(min=0).mean(1)[:, 0, 1:].reshape(3, 2, 2)  # R = I + A', row 0
    assert first == 4 and torch.allclose(maps, expected.detach(), atol=1e-6)
    assert not model.training  # it was in eval mode, and stays so


def test_gradient_rollout_depends_on_the_class_and_keeps_the_mode():
    torch.manual_seed(0)
    model = ViT(dim=32, depth=2, heads=2, mlp_dim=32).train()
    x = torch.randn(2, 3, 32, 32)
    cat, _ = gradient_rollout(model, x, class_index=3)
    dog, _ = gradient_rollout(model, x, class_index=5)
    top, best = gradient_rollout(model, x)
    assert model.training  # restored
    assert cat.shape == (2, 8, 8) and (cat >= 0).all() and not torch.allclose(cat, dog)
    with torch.no_grad():
        assert best == int(model.eval()(x)[0].argmax())


def test_gradient_rollout_explains_the_logits_of_a_head_given_in_place_of_the_models():
    torch.manual_seed(0)
    model = ViT(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=16).eval()
    probe = torch.nn.Linear(16, 3)  # a probe on the class token's features, as the app trains
    x = torch.randn(3, 3, 8, 8)
    maps, first = gradient_rollout(model, x, class_index=2, head=probe)
    read = []
    hook = model.norm.register_forward_hook(lambda module, inputs, output: read.append(output))
    _, (attention,) = model(x, return_attention=True)
    hook.remove()
    (grad,) = torch.autograd.grad(probe(read[0])[:, 2].sum(), attention)
    expected = (grad * attention).clamp(min=0).mean(1)[:, 0, 1:].reshape(3, 2, 2)
    assert first == 2 and torch.allclose(maps, expected.detach(), atol=1e-6)
    assert not torch.allclose(maps, gradient_rollout(model, x, class_index=2)[0], atol=1e-4)  # not the ViT's own
    assert gradient_rollout(model, x, head=probe)[1] == int(probe(read[0][:1]).argmax())  # the probe's top class
    assert model(x).shape == (3, 10)  # the model's own head is back
