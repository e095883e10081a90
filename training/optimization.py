"""The optimizer, the learning-rate schedule and the weight average of a run: what each
recipe's optimizer settings build (train.py, and tools/bench.py through it)."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping

import torch

ASSIGNMENT_EPOCHS = 160
ASSIGNMENT_MILESTONES = (100, 150)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """The settings the optimizer and its schedule are built from."""

    optimizer: str  # "adamw" or "sgd"
    lr: float  # the peak learning rate
    weight_decay: float
    momentum: float  # SGD's momentum, AdamW's beta1
    decay_all: bool  # AdamW: decay norms, biases and embeddings too
    bias_lr_scale: float  # SGD: BatchNorm shifts' rate multiplier
    epochs: int
    schedule: str  # "step", "cosine" or "linear"
    warmup_epochs: float

    @classmethod
    def of(cls, settings: Mapping) -> OptimizerSettings:
        """The fields of a run's settings (train.py's, as a dict) that shape its optimizer."""
        return cls(**{f.name: settings[f.name] for f in dataclasses.fields(cls)})


def scaled_milestones(epochs: int) -> list[int]:
    """The assignment's LR milestones (100 and 150 of 160 epochs) at another epoch count."""
    return [max(1, round(m * epochs / ASSIGNMENT_EPOCHS)) for m in ASSIGNMENT_MILESTONES]


def param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """One group with weight decay on everything, or two: matrices decayed; norms, biases
    and the position/class embeddings not (decaying those only pulls them towards 0)."""
    if decay_all:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay, keep = [], []
    for name, param in model.named_parameters():
        exempt = param.ndim <= 1 or name.split(".")[-1] in ("pos_embed", "cls_token")
        (keep if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def scaled_groups(model: torch.nn.Module, weight_decay: float, scale: float) -> list[dict]:
    """Every trainable parameter decayed; BatchNorm shifts at `scale` times the rate, with
    the decay divided by `scale` so that their decay per step stays the others'."""
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    train = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in train if id(p) not in shifts], "weight_decay": weight_decay},
        {"params": [p for p in train if id(p) in shifts], "weight_decay": weight_decay / scale, "lr_scale": scale},
    ]


def build_optimizer(model: torch.nn.Module, args: OptimizerSettings, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum; fused kernels where the device has them
    (AdamW's: 3.6x faster step() on one CPU thread)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    fused = device.type in _get_fused_kernels_supported_devices()
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            scaled_groups(model, args.weight_decay, args.bias_lr_scale),
            lr=args.lr,
            momentum=args.momentum,
            nesterov=True,
            fused=fused,
        )
    return torch.optim.AdamW(
        param_groups(model, args.weight_decay, args.decay_all), lr=args.lr, betas=(args.momentum, 0.999), fused=fused
    )


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones: list[int]) -> float:
    """Multiplier of the peak learning rate at an optimizer step."""
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "step":
        return ramp * 0.1 ** sum(step >= m for m in milestones)
    progress = min(1.0, max(0.0, step - warmup) / max(1, total - warmup))
    if schedule == "linear":  # Li, Yumer & Ramanan 2020: linear decay to zero over the budget
        return ramp * (1 - progress)
    return ramp * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, args: OptimizerSettings, steps_per_epoch: int, done_steps: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped after every optimizer step, and fast-forwarded past `done_steps` on a
    resume, so it follows the plan of the (possibly extended) run. The assignment's
    schedule is MultiStepLR itself; warmup, cosine or linear go through one LambdaLR."""
    import warnings

    for group in optimizer.param_groups:  # a resumed optimizer holds the decayed rate
        group["lr"] = args.lr * group.get("lr_scale", 1.0)
        group.pop("initial_lr", None)
    milestones = [m * steps_per_epoch for m in scaled_milestones(args.epochs)]
    if args.schedule == "step" and not args.warmup_epochs:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    else:
        total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, warmup, args.schedule, milestones)
        )
    with warnings.catch_warnings():  # stepping without optimizer.step() is the point here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done_steps):
            scheduler.step()
    return scheduler


class WeightAverage(torch.nn.Module):
    """An exponential moving average of a model's weights, buffers included: the first
    update copies them, each later one moves them 1 - decay of the way to the model's.
    It computes what torch's AveragedModel does with get_ema_multi_avg_fn and
    use_buffers, under the same state-dict keys, but counts its updates on the host as
    well: an update only queues work on the device, where AveragedModel reads its count
    back from the device every step and so waits for the step to finish."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model)
        self.decay = decay
        self.updates = 0
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        pairs = list(zip([*self.module.parameters(), *self.module.buffers()], [*model.parameters(), *model.buffers()]))
        if self.updates == 0:
            for mine, theirs in pairs:
                mine.copy_(theirs)
        else:
            floats = [(mine, theirs) for mine, theirs in pairs if mine.is_floating_point()]
            if floats:
                torch._foreach_lerp_([m for m, _ in floats], [t.detach() for _, t in floats], 1 - self.decay)
            for mine, theirs in pairs:
                if not mine.is_floating_point():  # a count such as BatchNorm's batches seen
                    mine.copy_(mine * self.decay + theirs * (1 - self.decay))
        self.updates += 1
        self.n_averaged.fill_(self.updates)

    def load_state_dict(self, state_dict: Mapping, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)
        return result


def build_ema(model: torch.nn.Module, decay: float) -> WeightAverage | None:
    """An exponential moving average of the weights (buffers included), or None."""
    return WeightAverage(model, decay) if decay else None
