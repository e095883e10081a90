"""Which attention kernels a training step of the assignment's ViT runs, read off torch's
profiler: the check that a GPU trains on a fused kernel (flash, memory-efficient or
cuDNN attention, with the weights' dropout inside it) rather than the written-out
softmax product that a CPU uses.

    python -m tools.attention_kernels --device cuda     # exits 1 if no fused kernel ran

It trains the assignment's ViT (attention dropout 0.2) for a few steps on random images,
under train.py's autocast and attention-kernel choice, and lists every profiled operator
and GPU kernel whose name says attention.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
import torch.nn.functional as F

from common.atomic_files import atomic_write, json_text
from training.errors import RunError
from training.runtime import ProcessPlacement, bf16_autocast, pick_device, use_cuda_device
from vit_model import ViT

# torch's fused attention operators; the math kernel is aten::_scaled_dot_product_attention_math.
FUSED_OPERATORS = (
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_fused_attention_overrideable",
)
WORDS = ("attention", "flash", "fmha", "sdpa")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device name")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast, as train.py's --amp")
    p.add_argument("--steps", type=int, default=3, help="profiled training steps (after one untimed step)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (the assignment's)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the findings as JSON")
    return p.parse_args(argv)


def attention_calls(procs: ProcessPlacement, bf16: bool, steps: int = 3, batch_size: int = 128) -> Counter:
    """How often each attention-named operator and GPU kernel ran in `steps` training
    steps of the assignment's ViT on procs' device."""
    from torch.profiler import ProfilerActivity, profile

    device = procs.device
    torch.manual_seed(0)
    model = ViT().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    images = torch.randn(batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        with bf16_autocast(device, bf16):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with procs.attention_context():
        step()  # the first step picks kernels and allocates; it is not what a run repeats
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    return Counter({e.key: e.count for e in prof.key_averages() if any(word in e.key.lower() for word in WORDS)})


def fused_operators(calls: Counter) -> list[str]:
    """The fused attention operators among `calls`, backward passes included."""
    return sorted(name for name in calls if name.startswith(FUSED_OPERATORS))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
    except RunError as err:
        raise SystemExit(f"error: {err}") from None
    if device.type == "cuda":
        use_cuda_device(device)
    procs = ProcessPlacement(0, 1, device)
    bf16 = procs.use_bf16(args.amp)
    calls = attention_calls(procs, bf16, args.steps, args.batch_size)
    fused = fused_operators(calls)
    print(f"{procs.machine()}; {procs.bf16_words(args.amp)}; {args.steps} training steps of batch {args.batch_size}")
    for name, count in sorted(calls.items()):
        print(f"  {count:5d}  {name}")
    verdict = "fused: " + ", ".join(fused) if fused else "no fused attention kernel: the written-out softmax product"
    print(verdict)
    found = {"machine": procs.machine(), "bf16": bf16, "calls": dict(calls), "fused": fused}
    if args.json:
        atomic_write(args.json, lambda f: f.write((json_text(found, indent=2) + "\n").encode()))
    if device.type == "cuda" and not fused:
        print("error: training on a GPU must run a fused attention kernel", file=sys.stderr)
        raise SystemExit(1)
    return found


if __name__ == "__main__":
    main()
