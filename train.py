"""Train the ViT or the CNN on CIFAR-10: build, train epoch by epoch, keep the best,
finish. The command line and what a resume may change are settings.py's; what each recipe
sets is recipes.py's; plots are figures.py's; the card, export and Hub upload report.py's.

    python train.py --epochs 160 --data-dir DATA --out runs/vit       # the assignment recipe
    python train.py --recipe budget --epochs 30 --data-dir DATA ...     # most accuracy per FLOP
    python train.py --model cnn --data-dir DATA --out runs/cnn          # the CNN, its own recipe
    python train.py --out runs/vit --resume                             # continue after a stop
    torchrun --nproc_per_node=2 train.py --data-dir DATA --out runs/ddp # several processes

The whole decoded training split lives on the training device as uint8 and is augmented
there a batch at a time (device_augment.py), so without a per-image policy no DataLoader
sits in the hot loop; a policy (TrivialAugment, AutoAugment) runs in --workers processes.
Every epoch reseeds its randomness from (seed, epoch, process), so a resumed run draws
what an uninterrupted one would, on any device. Everything a run writes goes to --out:
last.pt (resumable state, every epoch), best.pt (best on validation), metrics.jsonl, PNG
plots and export/ (model.safetensors, config.json, training.json, README.md model card).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import figures
import report
from atomic_files import WriteError, write_json
from checkpoints import Parent, RunState, load_checkpoint, remove_leftovers
from cnn_model import CNN
from data import TrainingData, build_mixing, build_policy, to_normalized, training_data_or_exit
from device_augment import DeviceAugment, DeviceTranslate
from distillation import Distillation, TeacherError, load_teacher
from loop import EpochBatches, Evaluator, Processes, seed_for, start_processes, train_one_epoch
from optimization import build_ema, build_optimizer, build_scheduler, scaled_milestones
from settings import check_args, parse_args, resumed_args, run_command, shareable_settings
from vit_model import ViT, count_parameters

# ---------------------------------------------------------------- checks, model, augmentation

def check_data_fits(args: argparse.Namespace, data: TrainingData, world: int,
                    parent: Parent | None) -> None:
    """Checks that need the data: the patch grid, the batch size, the --init-from model."""
    size = data.image_size
    if args.model == "vit" and size % args.patch_size:
        divisors = ", ".join(str(p) for p in range(1, size + 1) if size % p == 0)
        raise SystemExit(f"error: --patch-size {args.patch_size} does not divide the "
                         f"{size}x{size} images (use one of {divisors})")
    if args.batch_size % world:
        raise SystemExit(f"error: --batch-size {args.batch_size} is not divisible by {world} processes")
    if len(data.train_idx) < args.batch_size:
        raise SystemExit(f"error: --batch-size {args.batch_size} is larger than the "
                         f"{len(data.train_idx)} training images")
    if parent:
        parent.check_fits({**vars(args), "image_size": size, "num_classes": len(data.class_names),
                           "mean": data.mean}, len(data.val_idx))

def build_model(args: argparse.Namespace, class_names: list[str], mean: list[float], std: list[float],
                image_size: int = 32) -> ViT | CNN:
    if args.model == "cnn":
        return CNN(image_size=image_size, num_classes=len(class_names), widths=args.widths,
                   class_names=class_names, mean=mean, std=std)
    return ViT(image_size=image_size, patch_size=args.patch_size, num_classes=len(class_names),
               dim=args.dim, depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim,
               dropout=args.dropout, attn_dropout=args.attn_dropout, drop_path=args.drop_path,
               class_names=class_names, mean=mean, std=std)


def build_augment(args: argparse.Namespace, mean: list[float], std: list[float],
                  image_size: int) -> DeviceAugment | DeviceTranslate:
    if args.augment == "translate":
        return DeviceTranslate(mean, std, pad=args.translate)
    return DeviceAugment(mean, std, size=image_size)


# ---------------------------------------------------------------- the run

@dataclass
class Trainer:
    """What trains, built once per process: the model (wrapped for DDP and compile as
    asked), its optimizer, schedule and weight average, and the data pipeline."""
    model: ViT | CNN
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: torch.nn.Module | None
    batches: EpochBatches
    augment: DeviceAugment | DeviceTranslate
    mixing: object
    distill: Distillation | None
    teacher_record: dict | None   # the teacher's recipe, widths, split and figures

    @classmethod
    def build(cls, args: argparse.Namespace, data: TrainingData, state: RunState, saved: dict | None,
              parent: Parent | None, procs: Processes) -> Trainer:
        torch.manual_seed(args.seed)
        model = build_model(args, data.class_names, state.mean, state.std, data.image_size)
        if isinstance(model, CNN) and not saved:
            # Every k-th training image (the split is sorted by class): enough for the patches' covariance.
            sample = data.train_idx[::max(1, len(data.train_idx) // 5000)]
            model.whiten(to_normalized(data.images[sample], state.mean, state.std))
        model = model.to(procs.device)
        batches = EpochBatches(data.images[data.train_idx], data.labels[data.train_idx],
                               batch_size=args.batch_size, seed=args.seed, procs=procs,
                               policy=build_policy(args.policy), workers=args.workers)
        optimizer = build_optimizer(model, args, procs.device)
        ema = build_ema(model, args.ema)
        if saved:
            state.restore(saved, model, optimizer, ema)
        elif parent:
            model.load_state_dict(parent.weights)
            if ema is not None:
                ema.module.load_state_dict(parent.weights)
        scheduler = build_scheduler(optimizer, args, batches.steps, state.epoch * batches.steps)
        teacher, record = None, None
        if args.teacher:
            try:
                teacher, record = load_teacher(args.teacher, len(data.val_idx), args.seed, data.mean)
            except TeacherError as err:
                raise SystemExit(f"error: --teacher {err}") from None
            teacher = Distillation(teacher.to(procs.device), args.distill == "soft", args.temperature)
        train_model = procs.wrap(model)
        if args.compile:
            train_model = torch.compile(train_model, backend=args.compile)
        return cls(model, train_model, optimizer, scheduler, ema, batches,
                   build_augment(args, state.mean, state.std, data.image_size),
                   build_mixing(args, len(data.class_names)), teacher, record)

    @property
    def scored(self) -> ViT:
        """The weights that are validated, kept as best.pt and exported."""
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self, args: argparse.Namespace, epoch: int, procs: Processes, bf16: bool) -> dict:
        """One epoch, its randomness drawn afresh from (seed, epoch, rank)."""
        torch.manual_seed(seed_for(args.seed, "torch", epoch, procs.rank))
        random.seed(seed_for(args.seed, "python", epoch, procs.rank))
        with procs.attention_context():   # training only: evaluation keeps torch's choice
            return train_one_epoch(
                self.train_model, self.optimizer, self.scheduler, self.batches.epoch(epoch),
                steps=self.batches.steps, augment=self.augment,
                generator=procs.generator(seed_for(args.seed, "augment", epoch, procs.rank)),
                mixing=self.mixing, label_smoothing=args.label_smoothing, bf16=bf16,
                procs=procs, patch_keep=args.patch_keep, ema=self.ema, distill=self.distill,
                description=f"epoch {epoch + 1}/{args.epochs}",
                show_progress=procs.main and not args.no_progress)


def finish(model: ViT, *, run_dir: Path, args: argparse.Namespace, state: RunState,
           data: TrainingData, procs: Processes, bf16: bool, teacher: dict | None) -> dict:
    """Evaluate the best checkpoint again (plain and with flip TTA), draw the plots,
    write the export and results.json; returns the results."""
    print("evaluating the best checkpoint on the validation images ...", flush=True)
    best = load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best["model"])
    val_images, val_labels = data.images[data.val_idx], data.labels[data.val_idx]
    scorer = Evaluator(data.mean, data.std, args.eval_batch_size, procs.device, bf16)
    val = scorer.evaluate(model, val_images, val_labels)
    flipped = scorer.evaluate(model, val_images, val_labels, flip=True)
    test = data.test and scorer.evaluate(model, data.test.images, data.test.labels)
    summary = report.RunSummary(
        recipe=args.recipe, recipe_description=report.describe_recipe(args, scaled_milestones(args.epochs)),
        data=data.description, machine=report.machines_of(report.lineage(vars(state))),
        command=run_command(state.settings),
        epochs=args.epochs, best_epoch=best["epoch"], val_acc=val.acc, val_acc_flip_tta=flipped.acc,
        val_images=len(val_labels), split_seed=args.seed, class_names=data.class_names,
        confusion=report.confusion_matrix(val_labels, val.preds, len(data.class_names)).tolist(),
        history=state.history, settings=shareable_settings(state.settings),
        test_acc=test.acc if test else None, test_images=len(data.test) if data.test else 0,
        parent=report.public_record(state.parent), teacher=report.public_record(teacher))
    print("drawing the plots ...", flush=True)
    figures.write_run_plots(summary, run_dir, val_images, val_labels, val.preds)
    print("writing the export ...", flush=True)
    export_dir = report.export_model(model, run_dir, summary)
    result = {**summary.as_json(), "export": str(export_dir)}
    write_json(result, run_dir / "results.json")
    return result


def prepare_run(args: argparse.Namespace,
                argv: list[str] | None) -> tuple[argparse.Namespace, dict | None, RunState | None]:
    """The settings, the saved checkpoint (or None) and the run state (or None)."""
    if not args.resume:
        check_args(args)
        if (Path(args.out) / "last.pt").exists() and not args.overwrite:
            raise SystemExit(f"error: {args.out} holds a run (its last.pt): add --resume to "
                             "continue it, --overwrite to replace it, or choose another --out")
        return args, None, None
    run_dir = Path(args.out)
    saved = load_checkpoint(run_dir / "last.pt", resume_hint=True)
    if (run_dir / "best.pt").exists():
        load_checkpoint(run_dir / "best.pt", resume_hint=True)
    state = RunState.from_checkpoint(saved)
    args = resumed_args(args, argv, state.settings, state.epoch)
    check_args(args)
    return args, saved, state


def run_state(args: argparse.Namespace, data: TrainingData, state: RunState | None,
              parent: Parent | None) -> RunState:
    """A new run's state, or the resumed one after checking that the data is the same."""
    if state is None:
        return RunState(settings=vars(args).copy(), mean=data.mean, std=data.std,
                        parent=parent.training if parent else None)
    if not torch.allclose(torch.tensor(state.mean), torch.tensor(data.mean), atol=1e-6):
        raise SystemExit(f"error: the images in {args.data_dir} are not the ones this run was "
                         "trained on (their mean differs from the checkpoint's)")
    state.settings = vars(args).copy()
    return state


def diverged_message(args: argparse.Namespace, epoch: int, lr: float) -> str:
    """What to say when the loss stops being a number: nothing of that epoch is kept."""
    kept = f"last.pt keeps epoch {epoch - 1}" if epoch > 1 else "nothing was saved"
    return (f"error: the training loss became NaN or infinite in epoch {epoch} (learning rate "
            f"{lr:.3g} at its start): the run diverged, and {kept}. Lower --lr or lengthen "
            f"--warmup-epochs, then start again (--overwrite) in {args.out}")


def main(argv: list[str] | None = None) -> dict | None:
    """Train as the command line says; the run's results (None on other processes)."""
    try:
        return run(argv)
    except WriteError as err:   # every file is written whole or not at all
        raise SystemExit(f"error: {err}; the files written before are intact: free space (or "
                         "make the folder writable) and continue with --resume") from None


def run(argv: list[str] | None) -> dict | None:
    args, saved, state = prepare_run(parse_args(argv), argv)
    run_dir = Path(args.out)
    procs = start_processes(args.device)
    bf16 = procs.use_bf16(args.amp)
    data = procs.first_on_main(lambda: training_data_or_exit(
        args.data_dir, args.val_size, args.seed, args.train_subset, args.download))
    parent = Parent.load(args.init_from) if args.init_from and not saved else None
    check_data_fits(args, data, procs.world, parent)
    note = state and state.regrown_note(args)
    state = run_state(args, data, state, parent)
    trainer = Trainer.build(args, data, state, saved, parent, procs)
    val_images, val_labels = data.images[data.val_idx].to(procs.device), data.labels[data.val_idx]
    scorer = Evaluator(data.mean, data.std, args.eval_batch_size, procs.device, bf16)
    if procs.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(run_dir)
        print(f"{data.description}; {count_parameters(trainer.model):,} parameters; "
              f"{procs.machine()}; {procs.bf16_words(args.amp)}; "
              + (f"resuming after epoch {state.epoch} of {args.epochs}" if saved
                 else f"{args.epochs} epochs of {trainer.batches.steps} steps"), flush=True)
        if note:
            print(note, flush=True)

    result, first_epoch = None, state.epoch
    while state.epoch < args.epochs:
        start, lr = time.time(), trainer.optimizer.param_groups[0]["lr"]
        row = trainer.train_epoch(args, state.epoch, procs, bf16)
        if not math.isfinite(row["train_loss"]):   # every process sees the reduced loss
            raise SystemExit(diverged_message(args, state.epoch + 1, lr))
        state.epoch += 1
        if procs.main:
            val = scorer.evaluate(trainer.scored, val_images, val_labels)
            row = {"epoch": state.epoch, "lr": lr, **row, "val_loss": val.loss, "val_acc": val.acc}
            if trainer.ema is not None:   # the weights as trained, beside their average
                row["val_acc_without_ema"] = scorer.evaluate(trainer.model, val_images, val_labels).acc
            row.update(seconds=time.time() - start, machine=procs.machine())
            if note:
                row["note"], note = note, None
            state.end_epoch(row, run_dir, trainer.model, trainer.optimizer, trainer.scored, trainer.ema)
            report.print_epoch(state.epoch, row, args.epochs, first=state.epoch == first_epoch + 1)
        procs.barrier()
    if procs.main:
        result = finish(trainer.scored, run_dir=run_dir, args=args, state=state, data=data,
                        procs=procs, bf16=bf16, teacher=trainer.teacher_record)
        print(f"best validation accuracy {100 * result['val_acc']:.2f}% at epoch "
              f"{result['best_epoch']} ({100 * result['val_acc_flip_tta']:.2f}% with flip "
              f"TTA); export in {result['export']}", flush=True)
    procs.close()
    if result and args.push_to_hub:
        try:
            print(f"uploaded to {report.push_to_hub(Path(result['export']), args.push_to_hub)}")
        except RuntimeError as err:
            raise SystemExit(f"error: {err}") from None
    return result


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted: the run's last.pt holds its last finished epoch; "
                         "continue it with --resume") from None
