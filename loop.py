"""The machinery under train.py: the processes and device of a run, an epoch's batches,
one training epoch, and evaluation (the optimizer and schedule are optimization.py's; the
run's resumable state and its checkpoints are checkpoints.py's).

Kept apart from train.py so that train.py reads as the story of a run and bench.py can
time exactly the epoch that train.py runs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from data import ImageTensorDataset, to_normalized
from distillation import Distillation
from vit_model import tta_logits

# How often the progress bar reads the running loss back from the device: each read
# waits for the device's queue to drain, so it happens by the clock, not every step.
PROGRESS_SECONDS = 2.0
_T = TypeVar("_T")  # what first_on_main's load returns


# ---------------------------------------------------------------- processes and device

@dataclass
class Processes:
    """This process's place in the run (rank among world) and its device."""
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def use_bf16(self, mode: str) -> bool:
        """bf16 autocast: asked for, or (auto) where the hardware computes bf16 natively
        and, on a CPU, a ViT block's MLP measures faster in it (cpu_bf16_speedup). Elsewhere bf16 is emulated
        and slower than float32: CUDA GPUs before compute capability 8 (T4, V100), CPUs
        without AVX512-BF16 or AMX, and MPS."""
        if mode != "auto":
            return mode == "on"
        if self.device.type == "cuda":
            return torch.cuda.is_bf16_supported(including_emulation=False)
        return self.device.type == "cpu" and cpu_bf16_speedup() > 1.0

    def bf16_words(self, mode: str) -> str:
        """"bf16 on" or "bf16 off", for the log, with the speed auto measured on a CPU."""
        words = f"bf16 {'on' if self.use_bf16(mode) else 'off'}"
        if mode == "auto" and self.device.type == "cpu" and cpu_has_native_bf16():
            words += f" (measured {cpu_bf16_speedup():.2f}x float32's speed)"
        return words

    def attention_context(self) -> AbstractContextManager:
        """On CPUs the plain matmul-softmax attention beats the fused kernels for 65 tokens
        (1.5x per training step); elsewhere torch's own choice stands."""
        if self.device.type != "cpu":
            return nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return model
        ids = [self.device] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def machine(self) -> str:
        """The device in words, for logs and the model card."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        elif self.device.type == "cpu":
            # The vector units say which machine it was where the model name does not
            # (a virtual machine's "AMD EPYC" is a Zen 3 or a Zen 4).
            units = torch.backends.cpu.get_cpu_capability()
            units += ", native bf16" if cpu_has_native_bf16() else ""
            name = f"{cpu_model()} CPU ({units}), {torch.get_num_threads()} threads"
        else:
            name = self.device.type
        return name + (f" x{self.world} processes" if self.world > 1 else "")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def first_on_main(self, load: Callable[[], _T]) -> _T:
        """`load()` in the main process, then in the others: one downloads CIFAR-10 or
        writes the decode cache, the others read what it left."""
        result = load() if self.main else None
        self.barrier()
        return result if self.main else load()

    def close(self) -> None:
        if self.world > 1:
            dist.barrier()  # every rank waits until rank 0 has written the export
            dist.destroy_process_group()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AVX512-BF16 dot products (AMD Zen 4
    and later, Intel Cooper Lake and later) or AMX tiles (Intel Sapphire Rapids and
    later). torch 2.14 reports these only through private helpers; a torch without them
    counts as no."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster a ViT block's MLP trains (forward and backward, batch 128 of
    33 tokens) under bf16 autocast than in float32 on this CPU, best of five each; 0.0
    without native bf16. Native units alone do not settle it: an Intel Xeon whose virtual
    machine hides its AMX tiles multiplies bf16 on AVX512-BF16 at half its float32 rate
    (family 6 model 207, 2 cores: 125 against 254 GFLOP/s, a budget-recipe step 1.37x
    slower in bf16), where a Zen 4's AVX512-BF16 is the faster. About a second, once
    per process."""
    if not cpu_has_native_bf16():
        return 0.0
    generator = torch.Generator().manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.LayerNorm(256), torch.nn.Linear(256, 512),
                              torch.nn.GELU(), torch.nn.Linear(512, 256))
    x = torch.randn(128 * 33, 256, generator=generator)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(6):   # in turns, so that a burst of background load hits both; the first warms up
        for bf16 in (False, True):
            start = time.perf_counter()
            with bf16_autocast(torch.device("cpu"), bf16):
                loss = mlp(x).float().square().mean()
            loss.backward()
            seconds[bf16].append(time.perf_counter() - start)
    return min(seconds[False][1:]) / min(seconds[True][1:])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def pick_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """auto: CUDA, MPS or the CPU. An index-less CUDA device is this process's local rank
    under torchrun, and an index there is refused (every process would share that GPU);
    a name that is no device, or no device here, is named."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"error: --device {name} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and device.index is not None and world > 1:
        raise SystemExit(f"error: --device {name} under torchrun: name no index (--device "
                         "cuda), each process takes the GPU of its LOCAL_RANK")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
    if (device.type == "cuda" and device.index >= torch.cuda.device_count()
            or device.type == "mps" and not torch.backends.mps.is_available()):
        raise SystemExit(f"error: --device {device} is not on this machine")
    return device


def start_processes(device_name: str) -> Processes:
    """One process, or under torchrun the process group: NCCL for CUDA devices, gloo
    otherwise (so --device cpu works on a GPU machine), with the CUDA device set first."""
    if "RANK" not in os.environ:
        return Processes(0, 1, pick_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_name, local_rank, int(os.environ.get("WORLD_SIZE", 1)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), device)


# ---------------------------------------------------------------- an epoch's batches

def seed_for(*parts) -> int:
    """A seed that depends on every part (seed, purpose, epoch, rank, ...), so that each
    process and each epoch draws independently and reproducibly."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


class PolicyDataset(ImageTensorDataset):
    """Items are (epoch, index): each image's policy draw is seeded by both, so workers
    that live across epochs still draw what a resumed run draws."""

    def __init__(self, images, labels, policy, seed: int):
        super().__init__(images, labels, policy)
        self.seed = seed

    def __getitem__(self, item):
        epoch, i = item
        # The v2 policies draw from the CPU generator only; torch.manual_seed would also
        # reset the GPU's, which drives dropout when --workers 0 runs this in the trainer.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed_for(self.seed, "policy", epoch, i))
            return super().__getitem__(i)


class EpochBatches:
    """The training images, shuffled afresh each epoch (the same permutation in every
    process, each taking every world-th image) and cut into full batches only: a ragged
    last batch would change shapes, which torch.compile answers with a second graph.
    With a per-image policy the batches come from DataLoader workers that live across
    epochs; otherwise the images sit on the device and are indexed there."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 seed: int, procs: Processes, policy=None, workers: int = 0):
        self.procs, self.seed, self.policy = procs, seed, policy
        self.per_process = batch_size // procs.world
        self.steps = len(labels) // procs.world // self.per_process
        on = torch.device("cpu") if policy is not None else procs.device
        self.images, self.labels = images.to(on), labels.to(on)
        self.items: list[tuple[int, int]] = []
        self.loader = None
        if policy is not None:
            from torch.utils.data import DataLoader

            # A generator of its own: the loader's first iterator (the first epoch of this
            # process, a resumed one included) would otherwise draw its workers' base seed
            # from torch's global generator and shift that epoch's dropout draws.
            self.loader = DataLoader(PolicyDataset(self.images, self.labels, policy, seed),
                                     batch_size=self.per_process, sampler=self, num_workers=workers,
                                     persistent_workers=workers > 0,
                                     pin_memory=procs.device.type == "cuda",
                                     generator=torch.Generator().manual_seed(seed_for(seed, "loader")))

    def __iter__(self):   # the DataLoader's sampler: this epoch's (epoch, index) items
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) batches of this process on its device."""
        g = torch.Generator().manual_seed(seed_for(self.seed, "shuffle", epoch))
        used = self.steps * self.per_process * self.procs.world
        mine = torch.randperm(len(self.labels), generator=g)[:used][self.procs.rank::self.procs.world]
        if self.loader is None:
            mine = mine.to(self.images.device)
            for idx in mine.split(self.per_process):
                yield self.images[idx], self.labels[idx]
            return
        self.items = [(epoch, i) for i in mine.tolist()]
        device = self.procs.device
        for x, y in self.loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """The one autocast every training, evaluation and benchmark step runs under."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# ---------------------------------------------------------------- training and evaluation

def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, steps: int,
                    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                    generator: torch.Generator,
                    mixing: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
                    label_smoothing: float, bf16: bool, procs: Processes, patch_keep: float = 1.0,
                    ema: torch.optim.swa_utils.AveragedModel | None = None,
                    distill: Distillation | None = None,
                    description: str = "", show_progress: bool = False) -> dict:
    """One pass over this process's batches; returns mean loss and accuracy over all
    processes (against the dominant label when batches are mixed). With `distill`, half
    the loss is against the teacher's answer on the same augmented, mixed batch."""
    from tqdm import tqdm

    model.train()
    device = procs.device
    totals = torch.zeros(2, device=device)   # loss sum, correct
    seen = 0
    bar = tqdm(total=steps, desc=description, unit="step", disable=not show_progress,
               leave=False, dynamic_ncols=True)
    autocast = bf16_autocast(device, bf16)
    shown = time.monotonic()
    for step, (x, y) in enumerate(batches):
        x = augment(x, generator)
        target = y
        if mixing is not None:
            x, target = mixing(x, y)
        with autocast:
            logits = model(x, patch_keep=patch_keep) if patch_keep < 1 else model(x)
            loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
            if distill is not None:
                loss = distill.loss(logits, x, loss, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model.module if hasattr(model, "module") else model)
        dominant = target.argmax(dim=1) if target.ndim == 2 else target
        totals += torch.stack([loss.detach().float() * len(y),
                               (logits.argmax(dim=1) == dominant).sum().float()])
        seen += len(y)
        bar.update()
        if show_progress and (time.monotonic() - shown > PROGRESS_SECONDS or step == steps - 1):
            loss_sum, correct = totals.tolist()   # one host-device sync
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            shown = time.monotonic()
    bar.close()
    totals = torch.cat([totals, torch.tensor([float(seen)], device=device)])
    if procs.world > 1:
        dist.all_reduce(totals)
    loss_sum, correct, seen = totals.tolist()
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen}


@dataclass
class Evaluation:
    loss: float
    acc: float
    preds: torch.Tensor


@dataclass(frozen=True)
class Evaluator:
    """How a run scores a model on uint8 images: its normalization, batch size, device
    and autocast, in eval mode and without gradients."""
    mean: list[float]
    std: list[float]
    batch_size: int
    device: torch.device
    bf16: bool

    @torch.no_grad()
    def logits(self, model: torch.nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """float32 logits on the CPU, in eval mode (the model's mode is restored); with
        flip, the mean of the logits of each image and its mirror image (test-time
        augmentation)."""
        was_training, out = model.training, []
        model.eval()
        try:
            with bf16_autocast(self.device, self.bf16):
                for chunk in images.split(self.batch_size):
                    normalized = to_normalized(chunk.to(self.device), self.mean, self.std)
                    out.append(tta_logits(model, normalized, flip).cpu())
        finally:
            model.train(was_training)
        return torch.cat(out)

    def evaluate(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 flip: bool = False) -> Evaluation:
        logits = self.logits(model, images, flip)
        labels = labels.cpu()
        preds = logits.argmax(1)
        return Evaluation(F.cross_entropy(logits, labels).item(),
                          (preds == labels).float().mean().item(), preds)
