import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from vit_model import ViT, count_parameters, forward_flops, patchify, tta_logits, unpatchify


def test_default_model_matches_the_spec():
    model = ViT()
    assert count_parameters(model) == 3_195_146  # "about 3.2M"
    assert len(model.blocks) == 6
    block = model.blocks[0]
    assert isinstance(block.attn, torch.nn.MultiheadAttention)
    assert block.attn.num_heads == 8 and block.attn.embed_dim == 256
    assert block.mlp[0].out_features == 512 and isinstance(block.mlp[1], torch.nn.GELU)
    assert block.drop1.p == 0.2 and model.pos_drop.p == 0.2 and block.attn.dropout == 0.2
    assert all(isinstance(block.mlp[i], torch.nn.Dropout) and block.mlp[i].p == 0.2 for i in (2, 4))
    assert model.pos_embed.shape == (1, 65, 256) and model.cls_token.shape == (1, 1, 256)


@pytest.mark.parametrize("patch", [2, 4, 8, 16])
def test_shapes_and_attention_for_several_patch_sizes(patch):
    model = ViT(patch_size=patch, depth=2).eval()
    x = torch.randn(3, 3, 32, 32)
    logits, attention = model(x, return_attention=True)
    tokens = (32 // patch) ** 2 + 1
    assert logits.shape == (3, 10)
    assert len(attention) == 2
    for a in attention:
        assert a.shape == (3, 8, tokens, tokens)
        assert torch.allclose(a.sum(-1), torch.ones(3, 8, tokens), atol=1e-5)
    # Asking for the weights does not change the prediction.
    assert torch.allclose(model(x), logits, atol=1e-5)


def test_every_size_is_an_argument():
    model = ViT(
        image_size=16, patch_size=4, in_channels=1, num_classes=3, dim=32, depth=1, heads=2, mlp_dim=64, dropout=0.0
    )
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    with pytest.raises(ValueError, match="does not divide"):
        ViT(patch_size=5)
    with pytest.raises(ValueError, match="heads"):
        ViT(dim=30, heads=8)


def test_init_follows_timm():
    model = ViT()
    w = model.blocks[0].mlp[0].weight
    assert 0.018 < w.std() < 0.022 and abs(w.mean()) < 0.002  # trunc_normal_(std=0.02)
    assert model.cls_token.abs().max() < 1e-4
    assert torch.all(model.blocks[0].mlp[0].bias == 0)
    assert torch.all(model.blocks[0].attn.in_proj_bias == 0)


def test_dropout_only_in_training():
    model = ViT()
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ViT(class_names=[f"c{i}" for i in range(10)], mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6]).eval()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["class_names"][3] == "c3" and config["mean"] == [0.1, 0.2, 0.3]
    assert config["dim"] == 256 and config["patch_size"] == 4
    loaded = ViT.from_pretrained(tmp_path).eval()
    assert loaded.class_names == model.class_names and loaded.std == [0.4, 0.5, 0.6]
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert "vit-cifar" in (tmp_path / "README.md").read_text()


def test_loading_mismatched_weights_fails_loudly(tmp_path):
    ViT().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["head.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="head.weight"):
        ViT.from_pretrained(tmp_path)


def test_cli_prints_layer_table():
    out = subprocess.run([sys.executable, "vit_model.py"], capture_output=True, text=True, check=True).stdout
    assert "MultiheadAttention" in out and "[1, 65, 256]" in out
    assert "trainable parameters: 3,195,146" in out


# ---------------------------------------------------------------- patches

# ---------------------------------------------------------------- patches


def naive_patchify(images, p):
    b, c, h, w = images.shape
    rows = []
    for i in range(h // p):
        for j in range(w // p):
            rows.append(images[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(b, -1))
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("p", [1, 2, 4, 8, 16, 32])
def test_patchify_matches_naive_loop_and_round_trips(p):
    images = torch.randn(3, 3, 32, 32)
    patches = patchify(images, p)
    assert patches.shape == (3, (32 // p) ** 2, 3 * p * p)
    assert torch.equal(patches, naive_patchify(images, p))
    assert torch.equal(unpatchify(patches, p, 32, 32), images)


def test_patchify_non_square_and_first_patch_is_top_left():
    images = torch.arange(2 * 1 * 4 * 6).float().view(2, 1, 4, 6)
    patches = patchify(images, 2)
    assert patches.shape == (2, 6, 4)
    assert patches[0, 0].tolist() == [0, 1, 6, 7]
    assert patches[0, 1].tolist() == [2, 3, 8, 9]  # row-major: next patch to the right
    assert torch.equal(unpatchify(patches, 2, 4, 6), images)


@pytest.mark.parametrize("p", [0, 3, 5, 64])
def test_patchify_rejects_sizes_that_do_not_divide(p):
    with pytest.raises(ValueError, match="does not divide"):
        patchify(torch.zeros(1, 3, 32, 32), p)


# By hand: 6 blocks x 65 tokens x (4 x 256^2 + 2 x 256 x 512) multiply-adds, the two
# attention matmuls (2 x 8 heads x 65^2 x 32 per block), the patch embedding and the head.
FORWARD_MACS = 6 * 65 * (4 * 256**2 + 2 * 256 * 512) + 6 * 2 * 8 * 65 * 65 * 32 + 64 * 48 * 256 + 256 * 10


def test_cli_prints_the_real_cost_of_a_forward_pass():
    out = subprocess.run([sys.executable, "vit_model.py"], capture_output=True, text=True, check=True).stdout
    assert "mult-adds" not in out and "3,195,146" in out
    assert f"forward pass: {2 * FORWARD_MACS / 1e9:.3f} GFLOP per image" in out


def test_forward_flops_sees_every_matmul_attention_included_and_keeps_the_mode():
    model = ViT().eval()
    assert forward_flops(model) == 2 * FORWARD_MACS
    assert not model.training  # counted in training mode, handed back as it came


# ---------------------------------------------------------------- dropout

from vit_model import Dropout, attention, dropout  # noqa: E402


def test_dropout_keeps_each_element_with_probability_keep_and_scales_by_one_over_keep():
    torch.manual_seed(0)
    n = 2_000_000
    out = dropout(torch.ones(n), 0.2, training=True)
    assert set(out.unique().tolist()) == {0.0, 1.25}
    kept = (out != 0).double()
    # Binomial(n, 0.8): standard deviation of the fraction is sqrt(0.16 / n) = 2.8e-4.
    assert abs(kept.mean().item() - 0.8) < 5 * (0.16 / n) ** 0.5
    assert abs(out.double().mean().item() - 1.0) < 5 * 1.25 * (0.16 / n) ** 0.5


def test_dropout_keeps_exactly_the_elements_whose_32_bit_number_is_below_the_threshold():
    """Each element's number: its top byte from the shared 64-bit draws, then 24 more bits
    for the elements whose top byte ties the threshold's, drawn in that order."""
    n, p = 300_003, 0.2  # not a whole number of draws: the last one's spare bytes never count
    kept_words = round((1 - p) * 2**32)
    torch.manual_seed(7)
    out = dropout(torch.ones(n), p)
    torch.manual_seed(7)
    top = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), None).view(torch.uint8)[:n].long()
    ties = (top == kept_words >> 24).nonzero().squeeze(1)
    number = top << 24  # ties at the threshold's top byte get their low bits; others never need them
    number[ties] += torch.empty(len(ties), dtype=torch.int64).random_(0, 2**24)
    assert len(ties) > 1000  # about n / 256: the tie rule is exercised
    assert torch.equal(out != 0, number < kept_words)
    tied_kept = (out[ties] != 0).double().mean().item()  # 0.8 of the ties: the low bits matter
    assert abs(tied_kept - 0.8) < 5 * (0.16 / len(ties)) ** 0.5


def test_dropout_ignores_the_spare_bytes_of_the_last_draw():
    """Nine elements take two 64-bit draws: a tie among the seven spare bytes is no element."""
    top_byte = round(0.8 * 2**32) >> 24

    def spare_bytes(seed: int) -> list[int]:
        draws = torch.empty(2, dtype=torch.int64).random_(-(2**63), None, generator=torch.Generator().manual_seed(seed))
        return draws.view(torch.uint8)[9:].tolist()

    seed = next(s for s in range(10_000) if top_byte in spare_bytes(s))
    torch.manual_seed(seed)
    out = dropout(torch.ones(9), 0.2)
    assert out.shape == (9,) and set(out.tolist()) <= {0.0, 1.25}


def test_dropout_elements_are_independent():
    """Neighbours (which share one 64-bit draw in runs of eight), elements further apart
    and the two halves of the mask agree as often as independent coins would."""
    torch.manual_seed(1)
    n = 2_000_000
    kept = (dropout(torch.ones(n), 0.2, training=True) != 0).double()
    tolerance = 5 * (1 / n) ** 0.5  # the correlation's standard deviation is about 1/sqrt(n)
    for lag in (1, 2, 3, 64, 1000, n // 2):
        a, b = kept[:-lag], kept[lag:]
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < tolerance, lag
    pairs = kept.view(-1, 2)
    assert abs(torch.corrcoef(pairs.T)[0, 1].item()) < 2 * tolerance


def test_dropout_masks_are_fresh_every_call_and_follow_torch_manual_seed():
    x = torch.ones(500_000)
    torch.manual_seed(2)
    first, second = dropout(x, 0.2), dropout(x, 0.2)
    # Two independent masks agree with probability 0.8^2 + 0.2^2 = 0.68.
    agree = ((first != 0) == (second != 0)).double().mean().item()
    assert abs(agree - 0.68) < 5 * (0.68 * 0.32 / x.numel()) ** 0.5
    torch.manual_seed(2)
    assert torch.equal(dropout(x, 0.2), first)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_other_rates_and_dtypes(p):
    torch.manual_seed(3)
    n = 1_000_000
    for dtype in (torch.float32, torch.bfloat16):
        out = dropout(torch.ones(n, dtype=dtype), p)
        assert out.dtype == dtype
        assert abs((out != 0).double().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
        torch.testing.assert_close(
            out[out != 0].float(),
            torch.full_like(out[out != 0].float(), 1 / (1 - p)),
            rtol=1e-2 if dtype == torch.bfloat16 else 1e-6,
            atol=0,
        )


def test_dropout_gradient_is_the_mask_and_eval_is_the_identity():
    torch.manual_seed(4)
    x = torch.randn(64, 65, 256, requires_grad=True)
    out = dropout(x, 0.2)
    out.sum().backward()
    assert torch.equal(x.grad, torch.where(out != 0, 1.25, 0.0))
    torch.testing.assert_close(out[out != 0], 1.25 * x.detach()[out != 0])
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0) is x
    module = Dropout(0.2).eval()
    assert module(x) is x and module.p == 0.2 and isinstance(module, torch.nn.Dropout)


def test_training_attention_computes_what_multihead_attention_computes():
    torch.manual_seed(5)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True).train()
    x = torch.randn(3, 17, 64, requires_grad=True)
    expected, expected_weights = mha(x, x, x, need_weights=True, average_attn_weights=False)
    out, weights = attention(x, mha, need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    for a, b in zip(
        torch.autograd.grad(out.sum(), [x, mha.in_proj_weight, mha.out_proj.weight]),
        torch.autograd.grad(expected.sum(), [x, mha.in_proj_weight, mha.out_proj.weight]),
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_attention_weight_dropout_drops_a_fifth_of_the_weights_in_training_only():
    torch.manual_seed(6)
    model = ViT(depth=1, dropout=0.0, attn_dropout=0.2).train()
    x = torch.randn(64, 3, 32, 32)
    _, (weights,) = model(x, return_attention=True)
    n = weights.numel()
    assert abs((weights == 0).double().mean().item() - 0.2) < 5 * (0.16 / n) ** 0.5
    # Each row of softmax weights summed to 1; the kept ones, scaled by 1.25, to 1 on average.
    assert abs(weights.sum(-1).double().mean().item() - 1.0) < 0.01
    model.eval()
    _, (weights,) = model(x, return_attention=True)
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_flip_tta_is_the_mean_of_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = ViT(dim=32, depth=1, heads=2, mlp_dim=32).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tta_logits(model, x), model(x))
        assert torch.allclose(tta_logits(model, x, flip=True), (model(x) + model(x.flip(-1))) / 2)
        symmetric = torch.cat([x[..., :16], x[..., :16].flip(-1)], -1)  # its own mirror image
        assert torch.allclose(tta_logits(model, symmetric, flip=True), model(symmetric), atol=1e-6)
    assert torch.allclose(model.predict_proba(x, flip=True), tta_logits(model, x, flip=True).softmax(-1))


# ---------------------------------------------------------------- PatchDropout (patch_keep)


def tokens_entering_first_block(model, x, **kwargs):
    """The (B, tokens, dim) sequence that the first block receives, and the logits."""
    seen = []
    hook = model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        logits = model(x, **kwargs)
    finally:
        hook.remove()
    (tokens,) = seen
    return tokens, logits


def small_vit(patch_size=4):
    # dropout 0: the embedding dropout is the identity, so kept tokens can be matched exactly.
    torch.manual_seed(0)
    return ViT(patch_size=patch_size, dim=32, depth=2, heads=2, mlp_dim=32, dropout=0.0)


def kept_patch_indices(kept: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """For each kept token, the position (0 = class token, 1.. = patches) of the one token
    of the full sequence it equals exactly; fails if a token matches none or several."""
    matches = (kept[:, :, None, :] == full[:, None, :, :]).all(-1)  # (B, kept, full)
    assert (matches.sum(-1) == 1).all(), "a kept token is not exactly one token of the full sequence"
    return matches.int().argmax(-1)


@pytest.mark.parametrize(
    "patch_size, keep, tokens",
    [
        (4, 0.5, 32 + 1),  # 64 patches: half of them, plus the class token
        (4, 0.25, 16 + 1),
        (4, 0.3, 19 + 1),  # 19.2 patches round to 19
        (4, 0.37, 24 + 1),  # 23.68 patches round to 24
        (4, 0.001, 1 + 1),  # never fewer than one patch
        (4, 1.0, 64 + 1),  # keep everything: nothing is dropped
        (8, 0.5, 8 + 1),  # 16 patches of 8x8
    ],
)
def test_patch_dropout_feeds_the_blocks_fewer_tokens_in_training(patch_size, keep, tokens):
    model = small_vit(patch_size).train()
    x = torch.randn(3, 3, 32, 32)
    seq, logits = tokens_entering_first_block(model, x, patch_keep=keep)
    assert seq.shape == (3, tokens, 32) and logits.shape == (3, 10)
    _, attention = model(x, patch_keep=keep, return_attention=True)
    assert all(a.shape == (3, 2, tokens, tokens) for a in attention)
    model.eval()  # evaluation sees every patch, whatever patch_keep says
    seq, _ = tokens_entering_first_block(model, x, patch_keep=keep)
    assert seq.shape == (3, (32 // patch_size) ** 2 + 1, 32)


def test_patch_dropout_keeps_the_class_token_and_a_random_subset_of_positioned_patches():
    model = small_vit()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        full, _ = tokens_entering_first_block(model.eval(), x)
        model.train()
        torch.manual_seed(0)
        kept_a, _ = tokens_entering_first_block(model, x, patch_keep=0.5)
        torch.manual_seed(0)
        kept_again, _ = tokens_entering_first_block(model, x, patch_keep=0.5)
        torch.manual_seed(1)
        kept_b, _ = tokens_entering_first_block(model, x, patch_keep=0.5)
    assert full.shape == (8, 65, 32) and kept_a.shape == (8, 33, 32)
    # Every kept token is a full token exactly, i.e. a patch with its own position added.
    idx_a, idx_b = kept_patch_indices(kept_a, full), kept_patch_indices(kept_b, full)
    # The class token (with its position) is first in every image.
    cls = (model.cls_token + model.pos_embed[:, :1]).detach()
    assert torch.equal(kept_a[:, 0], cls[0].expand(8, -1))
    assert (idx_a[:, 0] == 0).all() and (idx_b[:, 0] == 0).all()
    subsets_a = [frozenset(row[1:].tolist()) for row in idx_a]
    subsets_b = [frozenset(row[1:].tolist()) for row in idx_b]
    # 32 distinct patches (no patch twice, the class token never among them).
    assert all(len(s) == 32 and min(s) >= 1 and max(s) <= 64 for s in subsets_a + subsets_b)
    assert len(set(subsets_a)) == 8  # a fresh subset per image of the batch
    assert subsets_a != subsets_b  # another seed, other subsets
    assert torch.equal(kept_again, kept_a)  # the same seed, the same subsets
    # Over the batch every patch position turns up: the subset is not a fixed region.
    assert set().union(*subsets_a, *subsets_b) == set(range(1, 65))


def test_patch_dropout_is_off_in_eval_mode():
    model = small_vit()
    model.train()
    model(torch.randn(2, 3, 32, 32), patch_keep=0.5)  # a training step leaves nothing behind
    same_weights = ViT(dim=32, depth=2, heads=2, mlp_dim=32, dropout=0.0)
    same_weights.load_state_dict(model.state_dict())
    model.eval()
    same_weights.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = same_weights(x)  # patch_keep 1.0
        assert torch.equal(model(x, patch_keep=0.5), reference)
        assert torch.equal(model(x, patch_keep=0.1), reference)
        torch.manual_seed(0)
        first = model(x, patch_keep=0.5)
        torch.manual_seed(1)
        assert torch.equal(model(x, patch_keep=0.5), first)  # no randomness in eval
    # In training mode the same weights do give other logits with half the patches.
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x, patch_keep=0.5), reference)


def test_helpers_that_evaluate_leave_the_models_mode_as_it_was():
    import rollout
    import training.evaluation

    model = ViT(dim=32, depth=1, heads=2, mlp_dim=32)
    x = torch.randn(2, 3, 32, 32)
    scorer = training.evaluation.Evaluator([0.5] * 3, [0.5] * 3, 8, torch.device("cpu"), False)
    for in_training in (True, False):
        for use in (
            lambda: model.predict_proba(x),
            lambda: rollout.model_rollout(model, x),
            lambda: scorer.logits(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
        ):
            model.train(in_training)
            use()
            assert model.training is in_training
