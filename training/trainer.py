"""What a run trains, built once per process from its settings: the model, wrapped for
DDP and torch.compile as asked, its optimizer, schedule and weight average, the batches,
the augmentation, mixing and distillation. train.py drives it; tools/contenders.py times
exactly the epoch it runs."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cnn_model import CNN
from data import TrainingData, to_normalized
from training.augment import DeviceAugment, DeviceTranslate, PolicyThenAugment, build_mixing, build_policy
from training.batches import EpochBatches
from training.checkpoints import RunState, StartingModel
from training.device_policy import DevicePolicy
from training.distillation import Distillation, TeacherError, load_teacher
from training.epoch import train_one_epoch
from training.errors import RunError
from training.optimization import OptimizerSettings, WeightAverage, build_ema, build_optimizer, build_scheduler
from training.runtime import ProcessPlacement, seed_for
from vit_model import ViT


@dataclass(frozen=True)
class TrainerSettings:
    """What the trainer reads of a run's checked settings: the architecture, the data
    pipeline, the optimizer, the teacher and how the process trains."""

    model: str  # "vit" or "cnn"
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    dropout: float
    attn_dropout: float
    drop_path: float
    widths: list[int]  # the CNN's width per stage
    seed: int
    batch_size: int
    policy: str
    policy_on: str  # "auto", "workers" or "device"
    workers: int  # asked for on this machine, shared among its processes
    augment: str  # "crop" or "translate"
    translate: int
    mixup_alpha: float
    cutmix_alpha: float
    label_smoothing: float
    patch_keep: float
    ema: float  # the weight average's decay per step; 0: none
    teacher: str | None  # the exported CNN to distill from
    distill: str  # "hard" or "soft"
    temperature: float
    compile: str | None  # torch.compile's backend; None: not compiled
    no_progress: bool
    optimization: OptimizerSettings

    @classmethod
    def of(cls, settings: Mapping) -> TrainerSettings:
        """The fields of a run's settings (train.py's, as a dict) that the trainer reads."""
        own = {f.name: settings[f.name] for f in dataclasses.fields(cls) if f.name != "optimization"}
        return cls(**own, optimization=OptimizerSettings.of(settings))


def build_model(
    settings: TrainerSettings, class_names: list[str], mean: list[float], std: list[float], image_size: int = 32
) -> ViT | CNN:
    if settings.model == "cnn":
        return CNN(
            image_size=image_size,
            num_classes=len(class_names),
            widths=settings.widths,
            class_names=class_names,
            mean=mean,
            std=std,
        )
    return ViT(
        image_size=image_size,
        patch_size=settings.patch_size,
        num_classes=len(class_names),
        dim=settings.dim,
        depth=settings.depth,
        heads=settings.heads,
        mlp_dim=settings.mlp_dim,
        dropout=settings.dropout,
        attn_dropout=settings.attn_dropout,
        drop_path=settings.drop_path,
        class_names=class_names,
        mean=mean,
        std=std,
    )


def policy_runs_on_device(settings: TrainerSettings, device: torch.device) -> bool:
    """Whether the per-image policy is drawn batched on the training device or in
    DataLoader workers. auto: on a GPU the device (workers would starve it), on a CPU the
    workers (the batched form computes every operation for every image, which costs the
    CPU more than the one each image drew)."""
    if settings.policy == "none":
        return False
    return settings.policy_on == "device" or (settings.policy_on == "auto" and device.type != "cpu")


def build_augment(
    settings: TrainerSettings, mean: list[float], std: list[float], image_size: int, policy_on_device: bool = False
) -> DeviceAugment | DeviceTranslate | PolicyThenAugment:
    if settings.augment == "translate":
        augment = DeviceTranslate(mean, std, pad=settings.translate)
    else:
        augment = DeviceAugment(mean, std, size=image_size)
    if policy_on_device:
        return PolicyThenAugment(DevicePolicy(settings.policy, image_size, image_size), augment)
    return augment


@dataclass
class Trainer:
    """What trains, built once per process: the model (wrapped for DDP and compile as
    asked), its optimizer, schedule and weight average, and the data pipeline."""

    settings: TrainerSettings
    model: ViT | CNN
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: WeightAverage | None
    batches: EpochBatches
    augment: DeviceAugment | DeviceTranslate | PolicyThenAugment
    mixing: object
    distill: Distillation | None
    teacher_record: dict | None  # the teacher's recipe, widths, split and figures

    @classmethod
    def build(
        cls,
        settings: TrainerSettings,
        data: TrainingData,
        state: RunState,
        saved: dict | None,
        starting_model: StartingModel | None,
        procs: ProcessPlacement,
    ) -> Trainer:
        torch.manual_seed(settings.seed)
        model = build_model(settings, data.class_names, state.mean, state.std, data.image_size)
        if isinstance(model, CNN) and not saved:
            # Every k-th training image (the split is sorted by class): enough for the patches' covariance.
            sample = data.train_idx[:: max(1, len(data.train_idx) // 5000)]
            model.whiten(to_normalized(data.images[sample], state.mean, state.std))
        model = model.to(procs.device)
        policy_on_device = policy_runs_on_device(settings, procs.device)
        batches = EpochBatches(
            data.images[data.train_idx],
            data.labels[data.train_idx],
            batch_size=settings.batch_size,
            seed=settings.seed,
            procs=procs,
            policy=None if policy_on_device else build_policy(settings.policy),
            workers=procs.workers(settings.workers),
        )
        optimizer = build_optimizer(model, settings.optimization, procs.device)
        ema = build_ema(model, settings.ema)
        if saved:
            state.restore(saved, model, optimizer, ema)
        elif starting_model:
            model.load_state_dict(starting_model.weights)
            if ema is not None:
                ema.module.load_state_dict(starting_model.weights)
        scheduler = build_scheduler(optimizer, settings.optimization, batches.steps, state.epoch * batches.steps)
        teacher, record = None, None
        if settings.teacher:
            try:
                teacher, record = load_teacher(settings.teacher, len(data.val_idx), settings.seed, data.mean)
            except TeacherError as err:
                raise RunError(f"--teacher {err}") from None
            teacher = Distillation(teacher.to(procs.device), settings.distill == "soft", settings.temperature)
        train_model = procs.wrap(model)
        if settings.compile:
            train_model = torch.compile(train_model, backend=settings.compile)
        return cls(
            settings,
            model,
            train_model,
            optimizer,
            scheduler,
            ema,
            batches,
            build_augment(settings, state.mean, state.std, data.image_size, policy_on_device),
            build_mixing(settings.mixup_alpha, settings.cutmix_alpha, len(data.class_names)),
            teacher,
            record,
        )

    @property
    def evaluated_model(self) -> ViT | CNN:
        """The weights that are validated, kept as best.pt and exported: the weight
        average where there is one, else the model as trained."""
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self, epoch: int, procs: ProcessPlacement, bf16: bool) -> dict:
        """One epoch, its randomness drawn afresh from (seed, epoch, rank)."""
        seed = self.settings.seed
        torch.manual_seed(seed_for(seed, "torch", epoch, procs.rank))
        random.seed(seed_for(seed, "python", epoch, procs.rank))
        with procs.attention_context():  # training only: evaluation keeps torch's choice
            return train_one_epoch(
                self.train_model,
                self.optimizer,
                self.scheduler,
                self.batches.epoch(epoch),
                steps=self.batches.steps,
                augment=self.augment,
                generator=procs.generator(seed_for(seed, "augment", epoch, procs.rank)),
                mixing=self.mixing,
                label_smoothing=self.settings.label_smoothing,
                bf16=bf16,
                procs=procs,
                patch_keep=self.settings.patch_keep,
                ema=self.ema,
                distill=self.distill,
                description=f"epoch {epoch + 1}/{self.settings.optimization.epochs}",
                show_progress=procs.main and not self.settings.no_progress,
            )
