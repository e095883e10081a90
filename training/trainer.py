"""What a run trains, built once per process from its settings: the model, wrapped for
DDP and torch.compile as asked, its optimizer, schedule and weight average, the batches,
the augmentation, mixing and distillation. train.py drives it; tools/contenders.py times
exactly the epoch it runs."""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import torch

from cnn_model import CNN
from data import TrainingData, to_normalized
from training.augment import DeviceAugment, DeviceTranslate, build_mixing, build_policy
from training.batches import EpochBatches
from training.checkpoints import Parent, RunState
from training.distillation import Distillation, TeacherError, load_teacher
from training.epoch import train_one_epoch
from training.errors import RunError
from training.optimization import OptimizerSettings, WeightAverage, build_ema, build_optimizer, build_scheduler
from training.runtime import Processes, seed_for
from vit_model import ViT


def build_model(
    args: argparse.Namespace, class_names: list[str], mean: list[float], std: list[float], image_size: int = 32
) -> ViT | CNN:
    if args.model == "cnn":
        return CNN(
            image_size=image_size,
            num_classes=len(class_names),
            widths=args.widths,
            class_names=class_names,
            mean=mean,
            std=std,
        )
    return ViT(
        image_size=image_size,
        patch_size=args.patch_size,
        num_classes=len(class_names),
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        mlp_dim=args.mlp_dim,
        dropout=args.dropout,
        attn_dropout=args.attn_dropout,
        drop_path=args.drop_path,
        class_names=class_names,
        mean=mean,
        std=std,
    )


def build_augment(
    args: argparse.Namespace, mean: list[float], std: list[float], image_size: int
) -> DeviceAugment | DeviceTranslate:
    if args.augment == "translate":
        return DeviceTranslate(mean, std, pad=args.translate)
    return DeviceAugment(mean, std, size=image_size)


@dataclass
class Trainer:
    """What trains, built once per process: the model (wrapped for DDP and compile as
    asked), its optimizer, schedule and weight average, and the data pipeline."""

    model: ViT | CNN
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: WeightAverage | None
    batches: EpochBatches
    augment: DeviceAugment | DeviceTranslate
    mixing: object
    distill: Distillation | None
    teacher_record: dict | None  # the teacher's recipe, widths, split and figures

    @classmethod
    def build(
        cls,
        args: argparse.Namespace,
        data: TrainingData,
        state: RunState,
        saved: dict | None,
        parent: Parent | None,
        procs: Processes,
    ) -> Trainer:
        torch.manual_seed(args.seed)
        model = build_model(args, data.class_names, state.mean, state.std, data.image_size)
        if isinstance(model, CNN) and not saved:
            # Every k-th training image (the split is sorted by class): enough for the patches' covariance.
            sample = data.train_idx[:: max(1, len(data.train_idx) // 5000)]
            model.whiten(to_normalized(data.images[sample], state.mean, state.std))
        model = model.to(procs.device)
        batches = EpochBatches(
            data.images[data.train_idx],
            data.labels[data.train_idx],
            batch_size=args.batch_size,
            seed=args.seed,
            procs=procs,
            policy=build_policy(args.policy),
            workers=procs.workers(args.workers),
        )
        optimizer_settings = OptimizerSettings.of(vars(args))
        optimizer = build_optimizer(model, optimizer_settings, procs.device)
        ema = build_ema(model, args.ema)
        if saved:
            state.restore(saved, model, optimizer, ema)
        elif parent:
            model.load_state_dict(parent.weights)
            if ema is not None:
                ema.module.load_state_dict(parent.weights)
        scheduler = build_scheduler(optimizer, optimizer_settings, batches.steps, state.epoch * batches.steps)
        teacher, record = None, None
        if args.teacher:
            try:
                teacher, record = load_teacher(args.teacher, len(data.val_idx), args.seed, data.mean)
            except TeacherError as err:
                raise RunError(f"--teacher {err}") from None
            teacher = Distillation(teacher.to(procs.device), args.distill == "soft", args.temperature)
        train_model = procs.wrap(model)
        if args.compile:
            train_model = torch.compile(train_model, backend=args.compile)
        return cls(
            model,
            train_model,
            optimizer,
            scheduler,
            ema,
            batches,
            build_augment(args, state.mean, state.std, data.image_size),
            build_mixing(args.mixup_alpha, args.cutmix_alpha, len(data.class_names)),
            teacher,
            record,
        )

    @property
    def scored(self) -> ViT:
        """The weights that are validated, kept as best.pt and exported."""
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self, args: argparse.Namespace, epoch: int, procs: Processes, bf16: bool) -> dict:
        """One epoch, its randomness drawn afresh from (seed, epoch, rank)."""
        torch.manual_seed(seed_for(args.seed, "torch", epoch, procs.rank))
        random.seed(seed_for(args.seed, "python", epoch, procs.rank))
        with procs.attention_context():  # training only: evaluation keeps torch's choice
            return train_one_epoch(
                self.train_model,
                self.optimizer,
                self.scheduler,
                self.batches.epoch(epoch),
                steps=self.batches.steps,
                augment=self.augment,
                generator=procs.generator(seed_for(args.seed, "augment", epoch, procs.rank)),
                mixing=self.mixing,
                label_smoothing=args.label_smoothing,
                bf16=bf16,
                procs=procs,
                patch_keep=args.patch_keep,
                ema=self.ema,
                distill=self.distill,
                description=f"epoch {epoch + 1}/{args.epochs}",
                show_progress=procs.main and not args.no_progress,
            )
