"""Where a run executes: its processes (one, or a torchrun group) and device, the CPU's
bf16 support measured rather than assumed, the one autocast every step runs under, and
the seeds that make each process and epoch draw independently and reproducibly."""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from training.errors import RunError

_T = TypeVar("_T")  # what first_on_main's load returns


@dataclass
class ProcessPlacement:
    """This process's place in the run (rank among world) and its device."""

    rank: int
    world: int
    device: torch.device
    local_world: int = 1  # this machine's processes, which share its cores

    def workers(self, asked: int) -> int:
        """DataLoader processes for this process: the --workers asked for, shared among
        this machine's processes (8 GPUs with --workers 8 start 8 in all, not 64)."""
        return max(1, asked // self.local_world) if asked > 0 else 0

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
        """ "bf16 on" or "bf16 off", for the log, with the speed auto measured on a CPU."""
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

    def peak_memory(self) -> dict[str, float]:
        """{"peak_memory_gib": the most this process's tensors have held on its GPU} on a
        CUDA device, else {}."""
        if self.device.type != "cuda":
            return {}
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}

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
    mlp = torch.nn.Sequential(
        torch.nn.LayerNorm(256), torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)
    )
    x = torch.randn(128 * 33, 256, generator=generator)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(6):  # in turns, so that a burst of background load hits both; the first warms up
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
        raise RunError(f"--device {name} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and device.index is not None and world > 1:
        raise RunError(
            f"--device {name} under torchrun: name no index (--device "
            "cuda), each process takes the GPU of its LOCAL_RANK"
        )
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
    if (
        device.type == "cuda"
        and device.index >= torch.cuda.device_count()
        or device.type == "mps"
        and not torch.backends.mps.is_available()
    ):
        raise RunError(f"--device {device} is not on this machine")
    return device


def start_processes(device_name: str) -> ProcessPlacement:
    """One process, or under torchrun the process group: NCCL for CUDA devices, gloo
    otherwise (so --device cpu works on a GPU machine), with the CUDA device set first."""
    if "RANK" not in os.environ:
        device = pick_device(device_name)
        if device.type == "cuda":
            use_cuda_device(device)
        return ProcessPlacement(0, 1, device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_name, local_rank, int(os.environ.get("WORLD_SIZE", 1)))
    if device.type == "cuda":
        use_cuda_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return ProcessPlacement(dist.get_rank(), dist.get_world_size(), device, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def use_cuda_device(device: torch.device) -> None:
    """Make `device` this process's current GPU (so that cuda:1 is asked about bf16 and
    receives every index-less allocation), with TensorFloat-32 for float32 matmuls and
    convolutions (Ampere and newer: float32's range, a 10-bit mantissa, several times
    float32's speed) and cuDNN's autotuner, since a run's shapes never change."""
    torch.cuda.set_device(device)
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def seed_for(*parts) -> int:
    """A seed that depends on every part (seed, purpose, epoch, rank, ...), so that each
    process and each epoch draws independently and reproducibly."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def bf16_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """The one autocast every training, evaluation and benchmark step runs under."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
