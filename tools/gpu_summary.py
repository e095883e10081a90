"""The one summary at the end of scripts/gpu_check.sh, from what its stages left in its
folder: each stage's verdict, each training run's speed, memory and accuracy, the
attention kernel that trained, and the benchmark's figures.

    python -m tools.gpu_summary runs/gpu-check       # exits 1 if any stage failed
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

TRAINING_RUNS = ("eager", "compiled", "torchrun", "policy-device", "policy-workers")
STAGES = ("tests", *TRAINING_RUNS, "attention", "bench")


def stage_lines(root: Path) -> tuple[list[str], bool]:
    """Each stage's verdict as the script recorded it ("NAME did not finish" where none
    was); whether every stage passed."""
    path = root / "stages.txt"
    recorded = dict(line.split(" ", 1) for line in path.read_text().splitlines()) if path.exists() else {}
    lines = [f"{name} {recorded.get(name, 'did not finish')}" for name in STAGES]
    return lines, all(recorded.get(name) == "ok" for name in STAGES)


def run_line(root: Path, name: str) -> str:
    """A training run's last epoch: seconds, images a second, peak GPU memory, accuracy;
    its first epoch too, which carries compilation and the kernels' first picks."""
    log, metrics = root / f"{name}.log", root / name / "metrics.jsonl"
    if not metrics.exists():
        return f"{name:14} no epoch finished"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    text = log.read_text() if log.exists() else ""
    steps = re.search(r"epochs of (\d+) steps", text)
    batch = json.loads((root / name / "export" / "training.json").read_text())["settings"]["batch_size"]
    bf16 = "bf16 on" if "bf16 on" in text else "bf16 off" if "bf16 off" in text else "bf16 ?"
    last = rows[-1]
    images = int(steps.group(1)) * batch if steps else 0
    return (
        f"{name:14} {len(rows)} epochs; first {rows[0]['seconds']:.1f} s, last {last['seconds']:.1f} s "
        f"({1 / last['seconds']:.3f} epochs/s, {images / last['seconds']:,.0f} img/s with validation); "
        f"peak {last.get('peak_memory_gib', float('nan')):.2f} GiB; validation {100 * last['val_acc']:.2f}%; {bf16}"
    )


def attention_line(root: Path) -> str:
    path = root / "attention.json"
    if not path.exists():
        return "attention: not measured"
    found = json.loads(path.read_text())
    return "attention in training: " + (", ".join(found["fused"]) or "no fused kernel")


def bench_lines(root: Path) -> list[str]:
    path = root / "bench.json"
    if not path.exists():
        return ["bench: not measured"]
    bench = json.loads(path.read_text())
    return [
        f"bench {name:8} {r['train_img_per_s']:>9,.0f} img/s training ({r['train_speed_vs_project']:.2f}x project), "
        f"{100 * r['train_fraction_of_matmul_peak']:.1f}% of the {r['peak_tflops']:.0f} TFLOP/s matmul peak"
        for name, r in bench.items()
        if name != "setup"
    ]


def summary(root: Path) -> tuple[str, bool]:
    stages, passed = stage_lines(root)
    lines = ["stages: " + "; ".join(stages)]
    lines += [run_line(root, name) for name in TRAINING_RUNS]
    lines += [attention_line(root), *bench_lines(root)]
    lines.append("GPU CHECK PASSED" if passed else "GPU CHECK FAILED")
    return "\n".join(lines), passed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="the folder scripts/gpu_check.sh wrote")
    args = p.parse_args(argv)
    text, passed = summary(args.folder)
    print(text)
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
