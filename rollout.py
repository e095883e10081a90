"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers").

A block's attention says how much each token reads from each other token, but the
residual path carries every token forward as well, and blocks compose. Rollout models
both: per block, fuse the heads, optionally drop the weakest attentions, add the identity
for the residual path and renormalize each row, then multiply the blocks together,

    R = A_L @ ... @ A_2 @ A_1        (accumulated as R = A_l @ R, from R = I)

so R[i, j] is how much token i at the output draws from input token j. The class
token's row over the patch tokens, R[0, 1:], on the patch grid, is the picture: which
parts of the image the classification drew from. Plain rollout is the same for every
class; gradient rollout (Chefer, Gur and Wolf 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers") weights each
head's attention by the gradient of one class's logit and keeps the positive part,

    A_l' = mean over heads of (dlogit_c / dA_l * A_l)^+,    R = R + A_l' @ R   (R = I)

so asking "why cat?" and "why dog?" gets two maps. The app's pictures of them are
space/pictures.py's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

HEAD_FUSIONS = ("mean", "max", "min")
# Plain rollout's defaults, chosen by the deletion test (tools/deletion_test.py): on the
# bundled ViT and the app's 500 validation images, mean fusion with 90% of the weakest
# attentions discarded ranks patches best of mean/max x 0/0.9 (area 0.333 against 0.370
# for mean and no discard, 0.385 for a random order).
DEFAULT_FUSION, DEFAULT_DISCARD = "mean", 0.9


def fuse_heads(attention: torch.Tensor, fusion: str = "mean") -> torch.Tensor:
    """(B, heads, T, T) -> (B, T, T) by the mean, max or min over the heads."""
    if fusion == "mean":
        return attention.mean(dim=1)
    if fusion == "max":
        return attention.amax(dim=1)
    if fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {fusion!r}")


def discard_weakest(attention: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the `ratio` fraction of weakest patch-to-patch entries of each (T, T) matrix.

    The class token's row and column are never dropped: the class token's row is the
    map itself, and its column is how the class token is carried between blocks, so
    dropping either would cut the paths the map is made of rather than thin out noise.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"discard ratio must be in [0, 1), got {ratio}")
    b, t, _ = attention.shape
    patches = attention[:, 1:, 1:].reshape(b, -1)
    k = int(patches.shape[1] * ratio)
    if k == 0:
        return attention
    weakest = patches.topk(k, dim=1, largest=False).indices
    out = attention.clone()
    out[:, 1:, 1:] = patches.scatter(1, weakest, 0.0).view(b, t - 1, t - 1)
    return out


def attention_rollout(
    attentions: Sequence[torch.Tensor | None],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    num_blocks: int | None = None,
) -> torch.Tensor:
    """Rollout matrices (B, T, T) from each block's attention (B, heads, T, T), first block
    first. Every row of the result sums to 1.

    `num_blocks`, when given, is how many maps there must be: a model run without
    return_attention=True uses its fused kernel, which returns no weights (None), and a
    rollout over some of the blocks would be a quietly wrong picture.
    """
    missing = sum(a is None for a in attentions)
    if missing or not attentions or (num_blocks is not None and len(attentions) != num_blocks):
        expected = f"{num_blocks}" if num_blocks is not None else "at least one"
        raise ValueError(
            f"attention rollout needs one attention map per block ({expected}), got "
            f"{len(attentions) - missing} maps and {missing} missing; run the model with "
            "return_attention=True (the fused attention kernel returns no weights)"
        )
    first = attentions[0]
    b, _, t, _ = first.shape
    eye = torch.eye(t, dtype=torch.float32, device=first.device)
    result = eye.expand(b, t, t)
    for attention in attentions:
        a = discard_weakest(fuse_heads(attention.float(), head_fusion), discard_ratio)
        a = a + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result


def class_token_map(matrix: torch.Tensor) -> torch.Tensor:
    """The class token's row over the patch tokens, (B, T, T) -> (B, grid, grid)."""
    b, t, _ = matrix.shape
    grid = math.isqrt(t - 1)
    if grid * grid != t - 1:
        raise ValueError(f"{t - 1} patch tokens do not form a square grid")
    return matrix[:, 0, 1:].reshape(b, grid, grid)


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map by its maximum, for display; an all-zero map stays zero."""
    peak = maps.flatten(1).amax(dim=1).clamp(min=torch.finfo(maps.dtype).tiny)
    return maps / peak.view(-1, *([1] * (maps.ndim - 1)))


def block_attention_map(
    attentions: Sequence[torch.Tensor | None], block: int, head: int | str = "mean"
) -> torch.Tensor:
    """The raw attention of one block, (B, grid, grid): the class token's row over the
    patches for one head (an index) or the heads fused ("mean", "max", "min")."""
    if not 0 <= block < len(attentions) or attentions[block] is None:
        raise ValueError(
            f"no attention map for block {block} (have {len(attentions)} blocks; "
            "run the model with return_attention=True)"
        )
    attention = attentions[block].float()
    if isinstance(head, str):
        fused = fuse_heads(attention, head)
    else:
        if not 0 <= head < attention.shape[1]:
            raise ValueError(f"head {head} does not exist: the block has {attention.shape[1]} heads")
        fused = attention[:, head]
    return class_token_map(fused)


@torch.no_grad()
def model_rollout(
    model: torch.nn.Module, x: torch.Tensor, head_fusion: str = DEFAULT_FUSION, discard_ratio: float = DEFAULT_DISCARD
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Run a vit_model.ViT on normalized images x in eval mode (its mode is restored);
    returns (logits, rollout maps (B, grid, grid), each block's attention)."""
    was_training = model.training
    model.eval()
    try:
        logits, attentions = model(x, return_attention=True)
    finally:
        model.train(was_training)
    matrix = attention_rollout(attentions, head_fusion, discard_ratio, num_blocks=len(model.blocks))
    return logits, class_token_map(matrix), attentions


def gradient_rollout(
    model: torch.nn.Module,
    x: torch.Tensor,
    class_index: int | None = None,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """The class-specific map (B, grid, grid) of a vit_model.ViT for normalized images x,
    in eval mode (the model's mode is restored), for `class_index`, or each image's top
    class when None; returns (maps, the class index of the first image). `head`, when
    given, scores in place of the model's head, from the class token's features that head
    reads (a linear probe on them, say): its logits are the ones explained."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            features, attentions = model.encode(x, return_attention=True)
            logits = (head or model.head)(features)
            chosen = logits.argmax(1) if class_index is None else torch.full((len(x),), class_index)
            score = logits.gather(1, chosen[:, None].to(logits.device)).sum()
            grads = torch.autograd.grad(score, attentions)
    finally:
        model.train(was_training)
    b, _, t, _ = attentions[0].shape
    result = torch.eye(t).expand(b, t, t).clone()
    for attention, grad in zip(attentions, grads):
        weighted = (grad.float() * attention.detach().float()).clamp(min=0).mean(dim=1)
        result = result + weighted @ result
    maps = class_token_map(result)
    return maps, int(chosen[0])
