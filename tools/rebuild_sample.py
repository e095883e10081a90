"""Rebuild the app's bundled validation sample (examples/val_sample.npz): the images the
Mistakes and comparison views score, drawn from the validation split every bundled model
held out.

    python -m tools.rebuild_sample --data-dir cifar10-jpeg
"""

from __future__ import annotations

import argparse

from data import DataError
from space.mistakes import SAMPLE, build_sample


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 (class folders or torchvision)")
    parser.add_argument("--out", default=str(SAMPLE), help="output .npz")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {build_sample(args.data_dir, args.out)}")
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
