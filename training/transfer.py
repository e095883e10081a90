"""Transfer a CIFAR-10 model to a user's own classes: three runs on one seeded split.

`transfer.py` (the command) calls `run_transfer`. The runs, all on the same stratified
80/20 split of the user's photos (each centre-cropped to a square and resized to the
source model's input size, as the app reads a photo):

  * scratch:  the source model's architecture, randomly initialised, normalised with the
              new training images' own mean/std (the CNN's whitening stem set from them);
  * probe:    the CIFAR-trained weights with a new classification layer (`head`); only
              that layer trains, the whole network stays in eval mode, so the CNN's
              batch-norm running statistics never move and every frozen feature is the one
              inference computes;
  * finetune: from the probe's last weights, every weight trains at the learning rate
              cut tenfold; the CNN's batch-norm layers stay in eval mode (statistics of
              batches of 32 user photos would overwrite 45,000 CIFAR images' worth).

The ViT has LayerNorm, which keeps no running statistics: there is nothing to freeze
beyond the weights, so its probe simply runs the frozen network in eval mode (dropout
and drop path off: a fixed feature extractor whose features are those the exported
model computes; noise on frozen features would only blur what the head learns), and its
fine-tune runs in train mode with the source's own dropout and drop path (the bundled
ViT: dropout 0, drop path 0.1), the regularisation it was trained with; LayerNorm gains
and shifts train like every other weight. The CNN keeps what its design fixes in every
run (the whitening stem's weights and the batch-norm scales, never trained on CIFAR
either); everything else trains in the fine-tune.

Every run: AdamW (weight decay on matrices only), one warm-up epoch then cosine decay,
peak learning rate 1e-3 from scratch, 3e-3 for the probe, 3e-4 for the fine-tune,
batch 32, augmentation flip + random 2-pixel translation over a reflected border
(training.augment.DeviceTranslate, the CNN recipe's). The best epoch of each run on
validation is kept; the best of the three is exported (transfer_report.py).

Each part has its module: the settings (transfer_settings.py), the photos and their
split (transfer_photos.py), the source model and the runs' starts (transfer_source.py),
one run (transfer_stages.py), and what the transfer leaves in --out (transfer_report.py).
"""

from __future__ import annotations

from pathlib import Path

from training import transfer_report
from training.transfer_photos import read_split
from training.transfer_settings import FINETUNE_LR_DIVISOR, STAGE_NAMES, Log, Settings, TransferError
from training.transfer_source import load_source, probe_start, scratch_start
from training.transfer_stages import fixed_by_design, train_stage


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to write over an earlier transfer's results unless asked to."""
    if out.exists() and not out.is_dir():
        raise TransferError(f"--out {out} is a file, not a folder")
    held = [name for name in ("results.json", "export") if (out / name).exists()]
    if held and not overwrite:
        raise TransferError(
            f"--out {out} already holds a run ({' and '.join(held)}): add --overwrite "
            "to replace it, or choose another --out"
        )


def run_transfer(settings: Settings, log: Log = print) -> dict:
    """The three runs, then results.json, the table, transfer.png and export/ in
    settings.out (transfer_report.py); returns what results.json holds."""
    check_out(settings.out, settings.overwrite)
    source = load_source(settings.source, settings.model)
    split, words = read_split(settings, source.model.image_size, log)
    log(f"{words}; {settings.epochs} epochs per run on {settings.device}")
    names, device = split.class_names, split.train_images.device
    scratch = scratch_start(source, names, split.train_images.cpu(), settings.seed).to(device)
    fixed = fixed_by_design(scratch)
    runs = {}
    log(f"run 1/3: {STAGE_NAMES['scratch']}, every weight random, learning rate {settings.scratch_lr:g}")
    runs["scratch"] = train_stage(scratch, "scratch", split, settings, fixed, log)
    transferred = probe_start(source, names, settings.seed).to(device)
    log(
        f"run 2/3: {STAGE_NAMES['probe']}, {source.folder} frozen, a new {len(names)}-class head, "
        f"learning rate {settings.lr:g}"
    )
    runs["probe"] = train_stage(transferred, "probe", split, settings, fixed, log)
    log(
        f"run 3/3: {STAGE_NAMES['finetune']} from the probe's last weights, learning rate "
        f"{settings.lr / FINETUNE_LR_DIVISOR:g}"
    )
    runs["finetune"] = train_stage(transferred, "finetune", split, settings, fixed, log)
    return transfer_report.finish(
        settings, source, split, words, runs, {"scratch": scratch, "probe": transferred, "finetune": transferred}, log
    )
