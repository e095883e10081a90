"""Train the ViT or the CNN on CIFAR-10: build, train epoch by epoch, keep the best,
finish. Behind it, the training/ package: the command line (command_line), what a resume
may change and the checks (settings), each recipe (recipes), what a run trains (trainer),
checkpoints, plots, and the card, export and Hub upload (card).

    python train.py --epochs 160 --data-dir DATA --out runs/vit       # the assignment recipe
    python train.py --recipe budget --epochs 30 --data-dir DATA ...     # most accuracy per FLOP
    python train.py --model cnn --data-dir DATA --out runs/cnn          # the CNN, its own recipe
    python train.py --out runs/vit --resume                             # continue after a stop
    torchrun --nproc_per_node=2 train.py --data-dir DATA --out runs/ddp # several processes

The whole decoded training split lives on the training device as uint8 and is augmented
there a batch at a time (training/augment.py), so without a per-image policy no DataLoader
sits in the hot loop; a policy (TrivialAugment, AutoAugment) runs in --workers processes.
Every epoch reseeds its randomness from (seed, epoch, process), so a resumed run draws
what an uninterrupted one would, on any device. Everything a run writes goes to --out:
last.pt (resumable state, every epoch), best.pt (best on validation), metrics.jsonl, PNG
plots and export/ (model.safetensors, config.json, training.json, README.md model card).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from calibration import fit_calibration, save_reliability_diagram
from common.atomic_files import WriteError, write_json
from common.model_folder import ModelError
from data import DataError, TrainingData, load_training_data, same_images
from training import card, console, evaluation, lineage, plots
from training.checkpoints import RunState, StartingModel, load_checkpoint, remove_leftovers
from training.command_line import parse_args
from training.errors import RunError
from training.evaluation import Evaluator
from training.optimization import scaled_milestones
from training.runtime import ProcessPlacement, start_processes
from training.settings import check_settings, resumed_settings, run_command, shareable_settings
from training.trainer import Trainer, TrainerSettings
from vit_model import ViT, count_parameters

# ---------------------------------------------------------------- checks, model, augmentation


def check_data_fits(
    args: argparse.Namespace, data: TrainingData, world: int, starting_model: StartingModel | None
) -> None:
    """Checks that need the data: the patch grid, the batch size, the --init-from model."""
    size = data.image_size
    if args.model == "vit" and size % args.patch_size:
        divisors = ", ".join(str(p) for p in range(1, size + 1) if size % p == 0)
        raise RunError(
            f"--patch-size {args.patch_size} does not divide the {size}x{size} images (use one of {divisors})"
        )
    if args.batch_size % world:
        raise RunError(f"--batch-size {args.batch_size} is not divisible by {world} processes")
    if len(data.train_idx) < args.batch_size:
        raise RunError(f"--batch-size {args.batch_size} is larger than the {len(data.train_idx)} training images")
    if starting_model:
        starting_model.check_fits(
            {**vars(args), "image_size": size, "num_classes": len(data.class_names), "mean": data.mean},
            len(data.val_idx),
        )


def finish(
    model: ViT,
    *,
    run_dir: Path,
    args: argparse.Namespace,
    state: RunState,
    data: TrainingData,
    procs: ProcessPlacement,
    bf16: bool,
    teacher: dict | None,
) -> dict:
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
    calibration = fit_calibration(val.logits, val_labels.cpu())
    model.temperature, model.known_threshold = calibration.temperature, calibration.known_threshold
    summary = card.RunSummary(
        recipe=args.recipe,
        recipe_description=console.describe_recipe(vars(args), scaled_milestones(args.epochs)),
        data=data.description,
        machine=lineage.machines_of(lineage.lineage(vars(state))),
        command=run_command(state.settings),
        epochs=args.epochs,
        best_epoch=best["epoch"],
        val_acc=val.acc,
        val_acc_flip_tta=flipped.acc,
        val_images=len(val_labels),
        split_seed=args.seed,
        class_names=data.class_names,
        confusion=evaluation.confusion_matrix(val_labels, val.preds, len(data.class_names)).tolist(),
        history=state.history,
        settings=shareable_settings(state.settings),
        test_acc=test.acc if test else None,
        test_images=len(data.test) if data.test else 0,
        parent=lineage.public_record(state.parent),
        teacher=lineage.public_record(teacher),
        calibration=calibration.as_json(),
    )
    print("drawing the plots ...", flush=True)
    plots.write_run_plots(summary, run_dir, val_images, val_labels, val.preds)
    save_reliability_diagram(val.logits, val_labels.cpu(), calibration.temperature, run_dir / "reliability.png")
    print("writing the export ...", flush=True)
    export_dir = card.export_model(model, run_dir, summary)
    result = {**summary.as_json(), "export": str(export_dir)}
    write_json(result, run_dir / "results.json")
    return result


def prepare_run(
    args: argparse.Namespace, argv: list[str] | None
) -> tuple[argparse.Namespace, dict | None, RunState | None]:
    """The settings, the saved checkpoint (or None) and the run state (or None)."""
    if not args.resume:
        check_settings(vars(args))
        if (Path(args.out) / "last.pt").exists() and not args.overwrite:
            raise RunError(
                f"{args.out} holds a run (its last.pt): add --resume to "
                "continue it, --overwrite to replace it, or choose another --out"
            )
        return args, None, None
    run_dir = Path(args.out)
    saved = load_checkpoint(run_dir / "last.pt", resume_hint=True)
    if (run_dir / "best.pt").exists():
        load_checkpoint(run_dir / "best.pt", resume_hint=True)
    state = RunState.from_checkpoint(saved)
    args = argparse.Namespace(**resumed_settings(vars(args), argv, state.settings, state.epoch))
    check_settings(vars(args))
    return args, saved, state


def run_state(
    args: argparse.Namespace, data: TrainingData, state: RunState | None, starting_model: StartingModel | None
) -> RunState:
    """A new run's state, or the resumed one after checking that the data is the same."""
    if state is None:
        return RunState(
            settings=vars(args).copy(),
            mean=data.mean,
            std=data.std,
            parent=starting_model.training if starting_model else None,
        )
    if not same_images(state.mean, data.mean):
        raise RunError(
            f"the images in {args.data_dir} are not the ones this run was "
            "trained on (their mean differs from the checkpoint's)"
        )
    state.settings = vars(args).copy()
    return state


def diverged_message(args: argparse.Namespace, epoch: int, lr: float) -> str:
    """What to say when the loss stops being a number: nothing of that epoch is kept."""
    kept = f"last.pt keeps epoch {epoch - 1}" if epoch > 1 else "nothing was saved"
    return (
        f"the training loss became NaN or infinite in epoch {epoch} (learning rate "
        f"{lr:.3g} at its start): the run diverged, and {kept}. Lower --lr or lengthen "
        f"--warmup-epochs, then start again (--overwrite) in {args.out}"
    )


def main(argv: list[str] | None = None) -> dict | None:
    """Train as the command line says; the run's results (None on other processes)."""
    try:
        return run(argv)
    except WriteError as err:  # every file is written whole or not at all
        raise SystemExit(
            f"error: {err}; the files written before are intact: free space (or "
            "make the folder writable) and continue with --resume"
        ) from None
    except (RunError, DataError, ModelError) as err:
        raise SystemExit(f"error: {err}") from None


def start_line(
    args: argparse.Namespace,
    data: TrainingData,
    trainer: Trainer,
    procs: ProcessPlacement,
    state: RunState,
    resumed: bool,
) -> str:
    """What a run says when it starts: the data, the model, the machine, what is left."""
    left = (
        f"resuming after epoch {state.epoch} of {args.epochs}"
        if resumed
        else f"{args.epochs} epochs of {trainer.batches.steps} steps"
    )
    loader = trainer.batches.loader
    policy = (
        ""
        if args.policy == "none"
        else f"; {args.policy} drawn for each batch on the {procs.device.type}"
        if loader is None
        else f"; {args.policy} drawn image by image in "
        + (f"{loader.num_workers} DataLoader workers" if loader.num_workers else "the training process")
    )
    return (
        f"{data.description}; {count_parameters(trainer.model):,} parameters; "
        f"{procs.machine()}; {procs.bf16_words(args.amp)}{policy}; {left}"
    )


def run(argv: list[str] | None) -> dict | None:
    args, saved, state = prepare_run(parse_args(argv), argv)
    run_dir = Path(args.out)
    procs = start_processes(args.device)
    bf16 = procs.use_bf16(args.amp)
    data = procs.first_on_main(
        lambda: load_training_data(args.data_dir, args.val_size, args.seed, args.train_subset, args.download)
    )
    starting_model = StartingModel.load(args.init_from) if args.init_from and not saved else None
    check_data_fits(args, data, procs.world, starting_model)
    note = state and state.replanned_note(vars(args))
    state = run_state(args, data, state, starting_model)
    trainer = Trainer.build(TrainerSettings.of(vars(args)), data, state, saved, starting_model, procs)
    scorer = Evaluator(data.mean, data.std, args.eval_batch_size, procs.device, bf16)
    if procs.main:  # only the main process validates
        val_images, val_labels = data.images[data.val_idx].to(procs.device), data.labels[data.val_idx]
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(run_dir)
        print(start_line(args, data, trainer, procs, state, resumed=bool(saved)), flush=True)
        if note:
            print(note, flush=True)

    result, first_epoch = None, state.epoch
    while state.epoch < args.epochs:
        start, lr = time.time(), trainer.optimizer.param_groups[0]["lr"]
        row = trainer.train_epoch(state.epoch, procs, bf16)
        if not math.isfinite(row["train_loss"]):  # every process sees the reduced loss
            raise RunError(diverged_message(args, state.epoch + 1, lr))
        state.epoch += 1
        if procs.main:
            val = scorer.evaluate(trainer.evaluated_model, val_images, val_labels)
            row = {"epoch": state.epoch, "lr": lr, **row, "val_loss": val.loss, "val_acc": val.acc}
            if trainer.ema is not None:  # the weights as trained, beside their average
                row["val_acc_without_ema"] = scorer.evaluate(trainer.model, val_images, val_labels).acc
            row.update(seconds=time.time() - start, machine=procs.machine(), **procs.peak_memory())
            if note:
                row["note"], note = note, None
            state.end_epoch(row, run_dir, trainer.model, trainer.optimizer, trainer.evaluated_model, trainer.ema)
            console.print_epoch(state.epoch, row, args.epochs, first=state.epoch == first_epoch + 1)
        procs.barrier()
    if procs.main:
        result = finish(
            trainer.evaluated_model,
            run_dir=run_dir,
            args=args,
            state=state,
            data=data,
            procs=procs,
            bf16=bf16,
            teacher=trainer.teacher_record,
        )
        print(
            f"best validation accuracy {100 * result['val_acc']:.2f}% at epoch {result['best_epoch']} "
            f"({100 * result['val_acc_flip_tta']:.2f}% with flip TTA); export in {result['export']}",
            flush=True,
        )
    procs.close()
    if result and args.push_to_hub:
        try:
            print(f"uploaded to {card.push_to_hub(Path(result['export']), args.push_to_hub)}")
        except RuntimeError as err:
            raise RunError(str(err)) from None
    return result


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(
            "interrupted: the run's last.pt holds its last finished epoch; continue it with --resume"
        ) from None
