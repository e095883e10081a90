"""Run by test_train's torchrun test in each process: train.py's main, with every rank
saving its model's parameters after each epoch to <out>/rank<R>-epoch<E>.pt, so that the
test can check that the processes hold the same weights (DDP averaged their gradients)."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
import training.trainer  # noqa: E402


def main() -> None:
    real_epoch = training.trainer.Trainer.train_epoch
    out = Path(sys.argv[sys.argv.index("--out") + 1])

    def recorded_epoch(self, epoch, procs, bf16):
        row = real_epoch(self, epoch, procs, bf16)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), out / f"rank{os.environ['RANK']}-epoch{epoch + 1}.pt")
        return row

    training.trainer.Trainer.train_epoch = recorded_epoch
    train.main(sys.argv[1:])


if __name__ == "__main__":
    main()
