"""The contenders that tools/bench.py times, each a model and a training loop.

project  train.py's own loop and model (from_train_py: the one function that knows
         train.py's internals);
timm     timm's VisionTransformer of the same size in the usual DataLoader loop;
naive    a first attempt: PIL images, classic transforms, a Python-loop patchify and
         torch's stock dropout and attention, float32;
cnn      train.py's loop with its other model: the cnn recipe's CNN, optimizer and
         augmentation, on the same images and under the same autocast.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms

import training.augment
import training.batches
import training.command_line
import training.optimization
import training.runtime
import training.trainer
from data import CROP_RATIO, CROP_SCALE, train_transform
from training.batches import ImageTensorDataset
from training.epoch import train_one_epoch
from training.optimization import build_optimizer, build_scheduler
from vit_model import CIFAR10_CLASSES, ViT

# ---------------------------------------------------------------- the naive baseline


def naive_patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """vit_model.patchify as a first attempt writes it: a Python loop over patch positions,
    one slice and one copy each, stacked at the end."""
    b, c, h, w = images.shape
    p = patch_size
    patches = []
    for top in range(0, h, p):
        for left in range(0, w, p):
            patches.append(images[:, :, top : top + p, left : left + p].reshape(b, c * p * p))
    return torch.stack(patches, dim=1)


class NaiveViT(ViT):
    """vit_model.ViT as a first attempt runs it: naive_patchify, and torch's stock
    nn.Dropout and nn.MultiheadAttention call (bernoulli_ masks, (L, B, E) layout copies)
    where the project has vit_model.dropout and vit_model.attention. In float32 this is
    also the project's own training step before issue 11, data loading aside."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for module in list(self.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.Dropout):
                    setattr(module, name, nn.Dropout(child.p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(naive_patchify(x, self.patch_size))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        for block in self.blocks:
            h = block.norm1(x)
            h, _ = block.attn(h, h, h, need_weights=False)
            x = x + block.drop_path(block.drop1(h))
            x = x + block.drop_path(block.mlp(block.norm2(x)))
        return self.head(self.norm(x[:, 0]))


def classic_transform(mean: Sequence[float], std: Sequence[float], size: int = 32) -> transforms.Compose:
    """The assignment's augmentation in the classic torchvision.transforms API, on PIL images."""
    return transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def timm_vit(reference: ViT, dropout: float, attn_dropout: float = 0.0, drop_path: float = 0.0) -> nn.Module:
    """timm's VisionTransformer with the sizes of `reference`. Dropout goes where the
    project has it (after the position embedding, the attention projection and in the
    MLP); timm's drop_rate would add a head dropout that the project lacks."""
    from timm.models.vision_transformer import VisionTransformer

    dim = reference.patch_embed.out_features
    return VisionTransformer(
        img_size=reference.image_size,
        patch_size=reference.patch_size,
        num_classes=reference.head.out_features,
        embed_dim=dim,
        depth=len(reference.blocks),
        num_heads=reference.blocks[0].attn.num_heads,
        mlp_ratio=reference.blocks[0].mlp[0].out_features / dim,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
        drop_rate=0.0,
        pos_drop_rate=dropout,
        proj_drop_rate=dropout,
        attn_drop_rate=attn_dropout,
        drop_path_rate=drop_path,
    )


# ---------------------------------------------------------------- the contenders


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a host timer sees it finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Contender:
    name: str
    model: nn.Module  # uncompiled, for FLOPs and parameter counts
    infer_model: nn.Module  # compiled when --compile applies
    run: Callable[[int], float]  # trains this many steps, returns synchronized seconds
    bf16: bool
    setup: dict


@dataclass
class TrainPy:
    """What bench takes from train.py, built by `from_train_py`, the only function that
    knows train.py's internals."""

    settings: argparse.Namespace  # the recipe's resolved values (dropout, lr, dim, ...)
    model: nn.Module  # as train.py builds it, on the device
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]  # train.py's optimizer
    epoch: Callable[[nn.Module, int], None]  # train.py's loop: this many steps of the model
    attention_context: Callable[[], AbstractContextManager]  # train.py's kernel choice
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # train.py's, per recipe


def from_train_py(
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    batch_size: int,
    seed: int,
    device: torch.device,
    bf16: bool,
    recipe: str = "assignment",
) -> TrainPy:
    """train.py's recipe, model, optimizer, augmentation and epoch loop, unchanged: an
    epoch is one epoch.train_one_epoch over the first steps x batch images, which ends
    with the epoch's single host synchronization."""
    cfg = training.command_line.parse_args(
        ["--recipe", recipe, "--batch-size", str(batch_size), "--epochs", "1", "--seed", str(seed)]
    )
    settings = training.trainer.TrainerSettings.of(vars(cfg))
    procs = training.runtime.ProcessPlacement(0, 1, device)
    model = training.trainer.build_model(settings, CIFAR10_CLASSES, mean, std, images.shape[-1]).to(device)
    optimizer = build_optimizer(model, settings.optimization, device)
    batches = training.batches.EpochBatches(
        images,
        labels,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        procs=procs,
        policy=training.augment.build_policy(cfg.policy),
    )
    scheduler = build_scheduler(optimizer, settings.optimization, batches.steps)
    augment = training.trainer.build_augment(settings, mean, std, images.shape[-1])
    mixing = training.augment.build_mixing(cfg.mixup_alpha, cfg.cutmix_alpha, len(CIFAR10_CLASSES))
    generator = procs.generator(cfg.seed)

    def epoch(fast: nn.Module, steps: int) -> None:
        train_one_epoch(
            fast,
            optimizer,
            scheduler,
            itertools.islice(batches.epoch(0), steps),
            steps=steps,
            augment=augment,
            generator=generator,
            mixing=mixing,
            label_smoothing=cfg.label_smoothing,
            bf16=bf16,
            procs=procs,
        )

    return TrainPy(
        cfg,
        model,
        lambda m: build_optimizer(m, settings.optimization, device),
        epoch,
        procs.attention_context,
        augment,
    )


def project_contender(
    tp: TrainPy, device: torch.device, bf16: bool, compile_model: bool, name: str = "project"
) -> Contender:
    """train.py's own loop, timed from the first step to its final synchronization."""
    fast = torch.compile(tp.model) if compile_model else tp.model

    def run(steps: int) -> float:
        with tp.attention_context():
            sync(device)
            start = time.perf_counter()
            tp.epoch(fast, steps)
            sync(device)
        return time.perf_counter() - start

    return Contender(
        name,
        tp.model,
        fast,
        run,
        bf16,
        {
            "data": f"uint8 tensor on the device, {type(tp.augment).__name__}",
            "model": f"{tp.settings.model} ({tp.settings.recipe} recipe)",
            "optimizer": "train.py's",
            "compile": compile_model,
        },
    )


def loader_contender(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    bf16: bool,
    compile_model: bool,
    setup: dict,
) -> Contender:
    """The usual loop over a DataLoader (model already on the device), with the same
    bookkeeping as train.py's."""
    fast = torch.compile(model) if compile_model else model
    autocast = training.runtime.bf16_autocast(device, bf16)

    def run(steps: int) -> float:
        fast.train()
        batches = iter(loader)  # starts (or restarts) the workers' epoch before the timer
        loss_sum = torch.zeros((), device=device)
        sync(device)
        start = time.perf_counter()
        for x, y in itertools.islice(batches, steps):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                loss = F.cross_entropy(fast(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        loss_sum.item()
        sync(device)
        return time.perf_counter() - start

    return Contender(
        name,
        model,
        fast,
        run,
        bf16,
        {**setup, "attention": "torch default", "workers": loader.num_workers, "compile": compile_model},
    )


def build_contenders(
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    args: argparse.Namespace,
    device: torch.device,
    bf16: bool,
) -> list[Contender]:
    workers = args.workers if args.workers is not None else (0 if device.type == "cpu" else min(8, os.cpu_count() or 1))

    def loader(dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )

    torch.manual_seed(args.seed)
    # train.py's settings: the assignment recipe, which the timing targets are about.
    tp = from_train_py(images, labels, mean, std, args.batch_size, args.seed, device, bf16)
    cfg = tp.settings
    project = project_contender(tp, device, bf16, args.compile)

    timm_model = timm_vit(project.model, cfg.dropout, cfg.attn_dropout, cfg.drop_path).to(device)
    timm = loader_contender(
        "timm",
        timm_model,
        tp.make_optimizer(timm_model),
        loader(ImageTensorDataset(images, labels, train_transform(mean, std, images.shape[-1]))),
        device,
        bf16,
        args.compile,
        {"data": "DataLoader, data.train_transform (transforms.v2) per uint8 image", "optimizer": "train.py's"},
    )

    from torchvision.transforms.functional import to_pil_image

    naive_model = NaiveViT(
        patch_size=cfg.patch_size,
        dim=cfg.dim,
        depth=cfg.depth,
        heads=cfg.heads,
        mlp_dim=cfg.mlp_dim,
        dropout=cfg.dropout,
        attn_dropout=cfg.attn_dropout,
        drop_path=cfg.drop_path,
    ).to(device)
    naive = loader_contender(
        "naive",
        naive_model,
        torch.optim.AdamW(naive_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        loader(
            ImageTensorDataset(
                [to_pil_image(im) for im in images], labels, classic_transform(mean, std, images.shape[-1])
            )
        ),
        device,
        False,
        False,
        {
            "data": "DataLoader, PIL images, classic torchvision.transforms per image",
            "optimizer": "torch.optim.AdamW defaults",
            "patchify": "Python loop",
            "dropout": "torch's nn.Dropout and nn.MultiheadAttention",
        },
    )
    cnn = project_contender(
        from_train_py(images, labels, mean, std, args.batch_size, args.seed, device, bf16, recipe="cnn"),
        device,
        bf16,
        args.compile,
        name="cnn",
    )
    return [project, timm, naive, cnn]
