"""The Vision Transformer: patch embedding, pre-LayerNorm blocks, class-token head.

Defaults follow the course assignment (patch 4, width 256, 6 blocks, 8 heads, MLP 512,
every dropout 0.2, the attention weights' included). Saving and loading go through
huggingface_hub's PyTorchModelHubMixin, so `save_pretrained`, `from_pretrained` and
`push_to_hub` work as on any Hub model; the config carries the class names and the
normalization statistics as well.

    python vit_model.py            # layer table with output shapes and parameter counts
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*P*P): non-overlapping P x P patches in row-major order,
    each flattened channel first, then row, then column."""
    b, c, h, w = images.shape
    p = patch_size
    if p <= 0 or h % p or w % p:
        raise ValueError(f"patch size {p} does not divide the image size {h}x{w}")
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of patchify: (B, N, C*P*P) -> (B, C, H, W)."""
    b, n, d = patches.shape
    p = patch_size
    if p <= 0 or height % p or width % p or n != (height // p) * (width // p) or d % (p * p):
        raise ValueError(f"{n} patches of {d} values do not tile a {height}x{width} image with patch size {p}")
    c = d // (p * p)
    x = patches.reshape(b, height // p, width // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


# Dropout keeps an element when a uniform 32-bit number falls below this many of the
# 2**32: the keep probability is exact to 2**-32 (torch.rand's floats resolve 2**-24).
_WORDS = 2**32
_LOW_BITS = 2**24  # of the number, below its top byte


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout, as F.dropout: each element kept independently with probability
    1 - p and scaled by 1 / (1 - p); the identity when not training.

    On a CPU, torch's bernoulli_ draws one double per element under a lock unless the CPU
    is Intel (only there does it take MKL's parallel path), and any CPU generator fills
    on one core. Here an element's 32-bit number is drawn a byte at a time: its top byte
    alone decides all but 1 in 256 elements, so one 64-bit draw from torch's default
    generator serves eight, and only the elements whose top byte ties the threshold's
    draw their other 24 bits. Several times cheaper than bernoulli_ on every CPU, and the
    same keep probability as comparing whole 32-bit numbers. Seeding torch
    (torch.manual_seed) fixes the masks. Other devices keep F.dropout, whose fused
    kernels are already cheap.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training=True)
    n = x.numel()
    kept_words = min(max(round((1.0 - p) * _WORDS), 1), _WORDS - 1)
    top_byte, low_bits = divmod(kept_words, _LOW_BITS)
    # random_(-2**63, None) fills all 64 bits: eight uniform bytes per draw.
    top = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), None).view(torch.uint8)
    # The comparison writes 0 / 1 straight into x's dtype, then one in-place scaling:
    # 2-3x cheaper than torch.where or a bool mask converted afterwards.
    mask = torch.empty(n, dtype=x.dtype)
    torch.lt(top[:n], top_byte, out=mask)
    # nonzero scans on one core: it looks for the 1 in 256 ties among the draws holding
    # one (seen as 64-bit words of eight flags), then among those draws' eight bytes.
    tied = top == top_byte
    near = tied.view(torch.int64).nonzero().squeeze(1)
    candidates = (near[:, None] * 8 + torch.arange(8)).flatten()
    ties = candidates[tied[candidates] & (candidates < n)]
    if len(ties):
        low = torch.empty(len(ties), dtype=torch.int64).random_(0, _LOW_BITS)
        mask[ties] = (low < low_bits).to(x.dtype)
    return x * mask.view(x.shape).mul_(_WORDS / kept_words)


class Dropout(nn.Dropout):
    """nn.Dropout (same `p`, same repr, no state) computed by `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, attn_dropout: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_dropout, batch_first=True)
        self.drop1 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            Dropout(dropout),
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, weights = attention(self.norm1(x), self.attn, need_weights, self.training)
        x = x + self.drop_path(self.drop1(h))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


def attention(
    x: torch.Tensor, mha: nn.MultiheadAttention, need_weights: bool = False, training: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention of batch-first x with mha's parameters: what nn.MultiheadAttention
    computes, without its (L, B, E) transposes and layout copies.

    Unless the weights are asked for, torch's scaled_dot_product_attention computes it,
    picking its fastest kernel (train.py's sdpa_kernel choice applies); on a GPU its
    flash and memory-efficient kernels drop the weights themselves (`dropout_p`). A CPU
    has no fused dropout: there the weights' dropout (mha.dropout, training only) is
    `dropout` above, where torch's math kernel would call bernoulli_, and the product
    is written out: softmax(q k^T / sqrt(d)), dropped, times v. Returns (output,
    per-head weights as used, or None).
    """
    b, n, e = x.shape
    heads = mha.num_heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, heads, e // heads).permute(2, 0, 3, 1, 4).unbind(0)
    p = mha.dropout if training else 0.0
    if need_weights or (p > 0.0 and x.device.type == "cpu"):
        scores = (q * (e // heads) ** -0.5) @ k.transpose(-2, -1)
        weights = dropout(scores.softmax(dim=-1), p, training)
        out = weights @ v
    else:
        weights, out = None, F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    return mha.out_proj(out.transpose(1, 2).reshape(b, n, e)), weights


class ViT(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="vit-cifar",
    tags=["image-classification", "vision-transformer", "cifar10", "pytorch"],
    license="mit",
    pipeline_tag="image-classification",
):
    """Vision Transformer for small images; every size is a constructor argument.

    `class_names`, `mean` and `std` are not used by the network itself: they ride along
    in config.json so that whoever loads the model normalizes and labels as in training.

    `temperature` and `known_threshold` (fitted on validation images when training ends)
    are for whoever serves it: softmax(logits / temperature) are calibrated
    probabilities, and an image whose energy score, temperature * logsumexp(logits /
    temperature), falls below known_threshold looks like none of the classes.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 256,
        depth: int = 6,
        heads: int = 8,
        mlp_dim: int = 512,
        dropout: float = 0.2,
        attn_dropout: float = 0.2,
        drop_path: float = 0.0,
        class_names: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        temperature: float = 1.0,
        known_threshold: float | None = None,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide image size {image_size}")
        if dim % heads:
            raise ValueError(f"{heads} heads do not divide the embedding width {dim}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.patch_size = patch_size
        self.image_size = image_size
        self.class_names = list(
            class_names or (CIFAR10_CLASSES if num_classes == 10 else [str(i) for i in range(num_classes)])
        )
        self.mean = list(mean) if mean is not None else [0.5] * in_channels
        self.std = list(std) if std is not None else [0.5] * in_channels
        self.temperature, self.known_threshold = temperature, known_threshold
        num_patches = (image_size // patch_size) ** 2

        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.pos_drop = Dropout(dropout)
        # Stochastic depth grows linearly with depth, as in DeiT and timm.
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim, dropout, attn_dropout, r) for r in rates)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialization of timm's VisionTransformer: truncated normal (std 0.02) for
        the positional embedding and every linear weight (the attention's packed q/k/v
        projection included), zero biases, cls token N(0, 1e-6), LayerNorm at identity."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.trunc_normal_(module.in_proj_weight, std=0.02)
                nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False, patch_keep: float = 1.0
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Logits for normalized images (B, C, H, W).

        With return_attention=True, also the list of each block's attention weights,
        (B, heads, tokens, tokens) with the class token first; asking for them switches
        off the fused attention kernel, so training never does.

        patch_keep < 1 (training only) keeps that fraction of the patch tokens, a fresh
        random subset per image after the positions are added (PatchDropout, Liu et al.
        2022): fewer tokens, a cheaper step; evaluation always sees every patch.
        """
        features, attentions = self.encode(x, return_attention, patch_keep)
        logits = self.head(features)
        return (logits, attentions) if return_attention else logits

    def encode(
        self, x: torch.Tensor, return_attention: bool = False, patch_keep: float = 1.0
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """What the head reads, (B, dim): the class token after the last norm; and each
        block's attention weights (None unless return_attention). Arguments as forward's."""
        tokens = self.patch_embed(patchify(x, self.patch_size)) + self.pos_embed[:, 1:]
        if self.training and patch_keep < 1:
            b, n, d = tokens.shape
            keep = max(1, round(patch_keep * n))
            idx = torch.rand(b, n, device=x.device).argsort(dim=1)[:, :keep]
            tokens = tokens.gather(1, idx[:, :, None].expand(b, keep, d))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, tokens], dim=1))
        attentions = []
        for block in self.blocks:
            x, weights = block(x, need_weights=return_attention)
            attentions.append(weights)
        return self.norm(x[:, 0]), attentions

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads for normalized images, (B, dim): a linear probe's features."""
        return self.encode(x)[0]

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Class probabilities for a batch of normalized images, in eval mode (the model's
        mode is restored); flip=True averages the logits with those of the mirror images
        (see tta_logits)."""
        was_training = self.training
        self.eval()
        try:
            return F.softmax(tta_logits(self, x, flip), dim=-1)
        finally:
            self.train(was_training)

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs):
        # The mixin loads non-strictly by default, which would leave layers that the
        # checkpoint lacks silently random; a mismatch must fail loudly instead.
        return super()._from_pretrained(strict=strict, **kwargs)


def tta_logits(model: nn.Module, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """float32 logits of normalized images x; with flip, the mean of the logits of each
    image and of its mirror image (horizontal-flip test-time augmentation: training
    flips at random, so the mirror image is as familiar to the model as the original)."""
    logits = model(x).float()
    return (logits + model(x.flip(-1)).float()) / 2 if flip else logits


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(model: nn.Module, image_size: int = 32) -> int:
    """FLOPs of one forward pass of one image (a multiply-add counts 2), counted by
    torch's FlopCounterMode on the real operators, on the model's own device. Counted in
    training mode with the plain matmul attention: the counter cannot see into the fused
    attention kernels that eval mode and the default backend may take; the arithmetic is
    the same. The model's mode is restored."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    was_training, device = model.training, next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
            model.train()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Print the ViT's layer table and the cost of a forward pass.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--patch-size", type=int, default=4, help="patch side in pixels")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size for the table")
    args = parser.parse_args()
    from torchinfo import summary

    model = ViT(patch_size=args.patch_size)
    table = summary(
        model, input_size=(args.batch_size, 3, 32, 32), depth=3, verbose=0, col_names=("output_size", "num_params")
    )
    # torchinfo's own "mult-adds" line misses the attention inside nn.MultiheadAttention
    # and labels its unit as bytes; the count below is taken on the real operators.
    print("\n".join(line for line in str(table).splitlines() if "mult-adds" not in line))
    flops = forward_flops(model)
    print(f"trainable parameters: {count_parameters(model):,}")
    print(f"forward pass: {flops / 1e9:.3f} GFLOP per image ({flops / 2e9:.3f} G multiply-adds)")


if __name__ == "__main__":
    main()
