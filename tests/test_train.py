import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import interrupted_then_resumed, read_metrics, run_args

import common.model_folder
import train
import training.batches
import training.checkpoints
import training.command_line
import training.epoch
import training.evaluation
import training.optimization
import training.runtime
import training.settings
import training.trainer
from calibration import ood_score
from data import load_training_data
from training.errors import RunError
from training.optimization import OptimizerSettings, build_optimizer, build_scheduler
from vit_model import ViT

ROOT = Path(__file__).resolve().parent.parent


def test_milestones_scale_with_epochs():
    assert training.optimization.scaled_milestones(160) == [100, 150]
    assert training.optimization.scaled_milestones(16) == [10, 15]
    assert training.optimization.scaled_milestones(2) == [1, 2]


def test_scheduler_follows_the_assignment():
    args = training.command_line.parse_args(["--epochs", "160", "--lr", "1e-3"])
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, OptimizerSettings.of(vars(args)), torch.device("cpu"))
    sched = build_scheduler(opt, OptimizerSettings.of(vars(args)), steps_per_epoch=3)
    assert isinstance(sched, torch.optim.lr_scheduler.MultiStepLR)
    lrs = stepped_lrs(opt, sched, 160 * 3)
    epoch_lr = lrs[::3]
    assert lrs[:300] == [pytest.approx(1e-3)] * 300  # epochs 1-100, no warmup
    assert epoch_lr[100] == pytest.approx(1e-4) and epoch_lr[149] == pytest.approx(1e-4)
    assert epoch_lr[150] == pytest.approx(1e-5) and epoch_lr[159] == pytest.approx(1e-5)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == 0.05


def assert_export_holds_best(out: Path) -> None:
    """The run's export loads through the Hub mixin and holds exactly its best.pt weights."""
    exported = ViT.from_pretrained(out / "export").state_dict()
    best = torch.load(out / "best.pt", weights_only=True)["model"]
    assert exported.keys() == best.keys() and all(torch.equal(exported[k], best[k]) for k in best)


def test_end_to_end_run_writes_everything(shared_folder_data, tmp_path):
    out = tmp_path / "run"
    result = train.main(run_args(shared_folder_data, out, "--epochs", "2"))
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "machine"}
    assert (
        result["machine"]
        == rows[0]["machine"]
        == training.runtime.ProcessPlacement(0, 1, torch.device("cpu")).machine()
    )
    from PIL import Image

    for name in common.model_folder.FIGURES:  # real pictures, not blank canvases
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 200
            assert len(picture.convert("RGB").getcolors(1 << 20) or range(1 << 20)) > 50, name
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] == result["best_epoch"]
    assert best["val_acc"] == pytest.approx(max(r["val_acc"] for r in rows))
    # The test split of the folder source is evaluated: by the best weights, on every test image.
    data = load_training_data(shared_folder_data, 30, 0)
    model = ViT(dim=64, depth=2, heads=4, mlp_dim=128)
    model.load_state_dict(best["model"])
    scores = [
        training.evaluation.Evaluator(last["mean"], last["std"], 64, torch.device("cpu"), bf16)
        .evaluate(model, data.test.images, data.test.labels)
        .acc
        for bf16 in (False, True)
    ]  # --amp auto: either
    assert result["test_images"] == len(data.test) and result["test_acc"] in scores
    # The export loads through the Hub mixin and predicts exactly as the best checkpoint.
    export = out / "export"
    assert {"model.safetensors", "config.json", "README.md", "curves.png", "training.json"} <= {
        p.name for p in export.iterdir()
    }
    loaded = ViT.from_pretrained(export).eval()
    # The export carries the calibration fitted on the validation logits of the best weights.
    calibration = json.loads((export / "training.json").read_text())["calibration"]
    val_logits = training.evaluation.Evaluator(last["mean"], last["std"], 64, torch.device("cpu"), False).logits(
        loaded, data.images[data.val_idx]
    )
    assert loaded.temperature == calibration["temperature"] > 0
    assert loaded.known_threshold == calibration["known_threshold"]
    kept = ood_score(val_logits, "energy", loaded.temperature) >= loaded.known_threshold
    assert 0.9 <= kept.float().mean() <= 1.0 and calibration["images"] == 30
    assert "| calibration | temperature" in (export / "README.md").read_text()
    reference = ViT(
        dim=64, depth=2, heads=4, mlp_dim=128, class_names=loaded.class_names, mean=loaded.mean, std=loaded.std
    )
    reference.load_state_dict(best["model"])
    x = torch.randn(5, 3, 32, 32)
    assert torch.equal(loaded(x), reference.eval()(x))
    config = json.loads((export / "config.json").read_text())
    assert config["mean"] == pytest.approx(last["mean"]) and len(config["class_names"]) == 10
    card = (export / "README.md").read_text()
    assert f"{100 * result['val_acc']:.2f}%" in card and "pipeline_tag: image-classification" in card
    assert not list(out.glob(".*tmp*"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(shared_folder_data, tmp_path, monkeypatch):
    train.main(run_args(shared_folder_data, tmp_path / "a", "--epochs", "3", "--seed", "5"))

    interrupted_then_resumed(run_args(shared_folder_data, tmp_path / "b", "--epochs", "3", "--seed", "5"), monkeypatch)

    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))


def test_kill_during_training_loses_at_most_the_current_epoch(shared_folder_data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", *run_args(shared_folder_data, out, "--epochs", "3")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert done >= 1
    train.main(["--out", str(out), "--resume", "--no-progress"])
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert_export_holds_best(out)


def test_torchrun_with_two_cpu_processes(shared_folder_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "tests/ddp_ranks.py",
            *run_args(shared_folder_data, out, "--epochs", "2"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2" in proc.stdout  # the device line names both processes
    assert proc.stdout.count("epoch   1/2") == 1  # only rank 0 prints
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert_export_holds_best(out)
    # Each process trained on its own half of every batch; DDP averaged the gradients, so
    # after every epoch both hold the same weights (without it they would differ).
    weights = {(r, e): torch.load(out / f"rank{r}-epoch{e}.pt", weights_only=True) for r in (0, 1) for e in (1, 2)}
    for epoch in (1, 2):
        assert all(torch.equal(weights[0, epoch][k], weights[1, epoch][k]) for k in weights[0, epoch]), epoch
    assert not torch.equal(weights[0, 1]["head.weight"], weights[0, 2]["head.weight"])  # it trained


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "0"], "--epochs must be positive"),
        (["--patch-size", "5"], "--patch-size 5 does not divide"),
        (["--batch-size", "-1"], "--batch-size must be positive"),
        (["--heads", "5"], "--heads 5 must divide --dim 64"),
        (["--depth", "0"], "--depth must be positive, got 0$"),
        (["--mlp-dim", "0"], "--mlp-dim must be positive, got 0$"),
        (["--device", "gpu0"], "--device gpu0 is not a device name"),
        (["--train-subset", "5000"], "--train-subset 5000 is more than the 90 training images"),
        (["--push-to-hub", "me/my model"], "--push-to-hub 'me/my model' is not a Hub repo id such as USER/vit-cifar"),
        (["--push-to-hub", "a/b/c"], "is not a Hub repo id"),
    ],
)
def test_bad_arguments_fail_at_once(folder_data, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        train.main(run_args(folder_data, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


def test_missing_data_folder_fails_at_once_unless_a_download_is_asked(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="data folder .*missing does not exist: .*add --download"):
        train.main(run_args(tmp_path / "missing", tmp_path / "run"))
    import torchvision.datasets

    asked = []
    monkeypatch.setattr(
        torchvision.datasets, "CIFAR10", lambda root, train, download: asked.append(download) or pytest.fail("offline")
    )
    with pytest.raises(BaseException, match="offline"):
        train.main(run_args(tmp_path / "missing", tmp_path / "run", "--download"))
    assert asked == [True]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="last.pt does not exist"):
        train.main(["--out", str(tmp_path / "none"), "--resume"])


def test_unreachable_hub_keeps_the_export(shared_folder_data, tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="upload to the Hub repo me/vit failed .*export in .* is intact"):
        train.main(run_args(shared_folder_data, out, "--epochs", "1", "--push-to-hub", "me/vit"))
    assert_export_holds_best(out)


# ---------------------------------------------------------------- recipes


def built_model(args) -> ViT:
    """The model train.py builds from these arguments, for ten classes."""
    settings = training.trainer.TrainerSettings.of(vars(args))
    return training.trainer.build_model(settings, [str(i) for i in range(10)], [0.5] * 3, [0.5] * 3)


def test_assignment_recipe_is_the_default_and_adds_nothing():
    args = training.command_line.parse_args([])
    assert (args.recipe, args.epochs, args.schedule, args.warmup_epochs) == ("assignment", 160, "step", 0)
    assert training.augment.build_policy(args.policy) is None
    assert training.augment.build_mixing(args.mixup_alpha, args.cutmix_alpha, 10) is None
    assert args.label_smoothing == 0.0 and args.decay_all
    model = built_model(args)
    # Every dropout 0.2, nn.MultiheadAttention's own on the attention weights included.
    assert all(b.drop_path.p == 0 and b.attn.dropout == 0.2 and b.drop1.p == 0.2 for b in model.blocks)
    assert model.pos_drop.p == 0.2 and model.blocks[0].mlp[2].p == 0.2


def test_strong_recipe_switches_every_ingredient_on():
    from torchvision.transforms import v2

    args = training.command_line.parse_args(["--recipe", "strong"])
    assert (args.epochs, args.schedule, args.warmup_epochs, args.label_smoothing) == (200, "cosine", 10, 0.1)
    policy = training.augment.build_policy(args.policy)
    assert isinstance(policy, v2.AutoAugment) and policy.policy == v2.AutoAugmentPolicy.CIFAR10
    mixing = training.augment.build_mixing(args.mixup_alpha, args.cutmix_alpha, 10)
    assert isinstance(mixing, v2.RandomChoice)
    assert {type(t) for t in mixing.transforms} == {v2.MixUp, v2.CutMix}
    model = built_model(args)
    rates = [b.drop_path.p for b in model.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)
    assert all(b.attn.dropout == 0.1 and b.drop1.p == 0.0 for b in model.blocks)


def test_each_ingredient_can_be_switched_off_alone():
    args = training.command_line.parse_args(
        ["--recipe", "strong", "--policy", "none", "--mixup-alpha", "0", "--decay-all"]
    )
    assert training.augment.build_policy(args.policy) is None
    assert type(training.augment.build_mixing(args.mixup_alpha, args.cutmix_alpha, 10)).__name__ == "CutMix"
    assert args.decay_all and args.label_smoothing == 0.1 and args.drop_path == 0.1
    with pytest.raises(RunError, match="--label-smoothing must be in"):
        training.settings.check_settings(vars(training.command_line.parse_args(["--label-smoothing", "1.5"])))


def test_no_weight_decay_on_norms_biases_and_embeddings():
    from vit_model import ViT

    model = ViT(depth=2)
    decay, keep = training.optimization.param_groups(model, 0.05, decay_all=False)
    assert decay["weight_decay"] == 0.05 and keep["weight_decay"] == 0.0
    kept = {id(p) for p in keep["params"]}
    for name, p in model.named_parameters():
        exempt = "bias" in name or "norm" in name or name in ("pos_embed", "cls_token")
        assert (id(p) in kept) == exempt, name
    assert len(training.optimization.param_groups(model, 0.05, decay_all=True)) == 1


def stepped_lrs(optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate that each of `steps` optimizer steps uses."""
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_cosine_learning_rate_at_chosen_steps():
    args = training.command_line.parse_args(["--recipe", "strong", "--lr", "1e-3"])  # 200 epochs, 10 warmup
    opt = build_optimizer(torch.nn.Linear(2, 2), OptimizerSettings.of(vars(args)), torch.device("cpu"))
    lrs = stepped_lrs(opt, build_scheduler(opt, OptimizerSettings.of(vars(args)), steps_per_epoch=10), 2000)
    assert lrs[0] == pytest.approx(1e-5)  # first warmup step: 1/100 of the peak
    assert lrs[49] == pytest.approx(0.5e-3)  # halfway through warmup
    assert lrs[99] == pytest.approx(1e-3)  # end of warmup: the peak
    assert lrs[100 + 950] == pytest.approx(0.5e-3)  # half of the cosine
    assert lrs[-1] < 1e-8 and lrs == lrs[:100] + sorted(lrs[100:], reverse=True)


def test_mixup_cutmix_targets_sum_to_one():
    args = training.command_line.parse_args(["--recipe", "strong"])
    mixing = training.augment.build_mixing(args.mixup_alpha, args.cutmix_alpha, 10)
    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32)
    y = torch.arange(32) % 10
    mixed, target = mixing(x, y)
    assert target.shape == (32, 10)
    assert torch.allclose(target.sum(1), torch.ones(32))
    assert (target > 0).sum(1).max() == 2 and not torch.equal(mixed, x)


def test_policy_draws_per_image_in_workers():
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(64, -1, -1, -1).contiguous()
    labels = torch.zeros(64, dtype=torch.long)
    procs = training.runtime.ProcessPlacement(0, 1, torch.device("cpu"))

    def batches_with(workers: int) -> training.batches.EpochBatches:
        policy = training.augment.build_policy("autoaugment")
        return training.batches.EpochBatches(
            images, labels, batch_size=64, seed=0, procs=procs, policy=policy, workers=workers
        )

    batches = batches_with(2)
    ((x, y),) = list(batches.epoch(0))
    assert x.dtype == torch.uint8 and x.shape == (64, 3, 32, 32)
    assert len({bytes(img.numpy()) for img in x}) > 20  # one draw per image, not per batch
    ((other, _),) = list(batches.epoch(1))
    assert not torch.equal(x, other)  # a new epoch draws anew, with the same workers
    ((x_again, _),) = list(batches_with(1).epoch(0))
    assert torch.equal(x, x_again)  # seeded per (epoch, image): a resumed epoch draws the same


def test_policy_draw_in_the_training_process_leaves_the_gpu_generator_alone(monkeypatch):
    # With --workers 0 on a GPU the draw runs in the trainer, whose CUDA generator drives
    # dropout and PatchDropout: reseeding it per image would repeat the same masks.
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    monkeypatch.setattr(torch.mps, "manual_seed", reseeded.append)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    dataset = training.batches.PolicyDataset(
        images, torch.zeros(4, dtype=torch.long), training.augment.build_policy("trivialaugment"), seed=0
    )
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    first = dataset[(0, 1)][0]
    assert torch.equal(torch.rand(3), before)  # the caller's CPU stream is untouched too
    assert torch.equal(dataset[(0, 1)][0], first)  # and the draw is still seeded per image
    assert set(reseeded) == {5}  # only the test's own torch.manual_seed calls


def test_torchrun_processes_take_the_gpu_of_their_local_rank(monkeypatch):
    calls = []
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set", d)))
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda p: calls.append(("matmul", p)))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(training.runtime.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(training.runtime.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(training.runtime.dist, "get_world_size", lambda: 2)
    procs = training.runtime.start_processes("cuda")
    cuda1 = torch.device("cuda", 1)
    assert procs.device == cuda1 and calls == [("set", cuda1), ("matmul", "high"), ("nccl", {"device_id": cuda1})]
    assert torch.backends.cudnn.benchmark  # a run's shapes never change
    # The machine's two processes share --workers rather than each starting as many.
    assert procs.local_world == 2 and [procs.workers(n) for n in (8, 1, 0)] == [4, 1, 0]
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name)
    calls.clear()
    single = training.runtime.start_processes("cuda:1")  # one process on the second GPU
    assert single.device == cuda1 and calls == [("set", cuda1), ("matmul", "high")]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RunError, match="--device cuda:0 under torchrun: name no index"):
        training.runtime.start_processes("cuda:0")
    with pytest.raises(RunError, match="cuda:3 is not on this machine"):
        training.runtime.pick_device("cuda:3")


def test_main_process_loads_the_data_before_the_others(monkeypatch):
    events = []
    monkeypatch.setattr(training.runtime.dist, "barrier", lambda: events.append("barrier"))
    for rank in (0, 1):
        procs = training.runtime.ProcessPlacement(rank, 2, torch.device("cpu"))
        assert procs.first_on_main(lambda rank=rank: events.append(f"load {rank}") or rank) == rank
    assert events == ["load 0", "barrier", "barrier", "load 1"]


def test_the_card_command_trains_the_run_again_whatever_resumed_it():
    args = training.command_line.parse_args(
        [
            "--recipe",
            "budget",
            "--epochs",
            "100",
            "--lr",
            "5e-4",
            "--data-dir",
            "/somewhere/cifar10-jpeg",
            "--out",
            "/tmp/x",
            "--workers",
            "1",
            "--ema",
            "0.999",
            "--no-decay-all",
            "--dim",
            "128",
        ]
    )
    # Only what differs from the recipe (lr 5e-4 and no-decay-all are the budget's own);
    # runtime flags, --out and --resume are left out.
    assert training.settings.run_command(vars(args)) == (
        "python train.py --recipe budget --epochs 100 --data-dir cifar10-jpeg --ema 0.999 --dim 128"
    )
    args = training.command_line.parse_args(["--epochs", "3", "--decay-all", "--policy", "autoaugment"])
    assert training.settings.run_command(vars(args)) == (
        "python train.py --recipe assignment --epochs 3 --data-dir data --policy autoaugment"
    )
    args = training.command_line.parse_args(["--recipe", "strong", "--no-decay-all", "--decay-all"])
    assert training.settings.run_command(vars(args)).endswith("--data-dir data --decay-all")
    args = training.command_line.parse_args(
        ["--recipe", "budget", "--init-from", "/work/main/weights", "--teacher", "/work/runs/teacher30"]
    )
    assert training.settings.run_command(vars(args)).endswith("--init-from weights --teacher teacher30")


def test_strong_recipe_trains_end_to_end(shared_folder_data, tmp_path, monkeypatch):
    seen = []
    real_ce = training.epoch.F.cross_entropy

    def recording_ce(logits, target, **kwargs):
        seen.append((target.shape, kwargs.get("label_smoothing")))
        return real_ce(logits, target, **kwargs)

    monkeypatch.setattr(training.epoch.F, "cross_entropy", recording_ce)
    result = train.main(
        run_args(
            shared_folder_data,
            tmp_path / "run",
            "--recipe",
            "strong",
            "--epochs",
            "2",
            "--warmup-epochs",
            "1",
            "--workers",
            "2",
        )
    )
    training_calls = [s for s in seen if s[1] == 0.1]
    assert training_calls and all(shape[1:] == (10,) for shape, _ in training_calls)  # soft targets
    assert result["recipe"] == "strong" and result["settings"]["policy"] == "autoaugment"
    assert "strong recipe, 2 epochs" in (tmp_path / "run" / "export" / "README.md").read_text()


# ---------------------------------------------------------------- every device


def test_every_epoch_reseeds_from_seed_epoch_and_rank():
    seeds = {training.runtime.seed_for(0, "augment", epoch, rank) for epoch in range(3) for rank in range(4)}
    assert len(seeds) == 12  # no two processes or epochs share a stream
    assert training.runtime.seed_for(0, "augment", 1, 0) == training.runtime.seed_for(0, "augment", 1, 0)


def test_processes_split_each_epoch_into_full_disjoint_batches():
    images = torch.zeros(45, 3, 4, 4, dtype=torch.uint8)
    labels = torch.arange(45)
    shards = []
    for rank in range(2):
        procs = training.runtime.ProcessPlacement(rank, 2, torch.device("cpu"))
        batches = training.batches.EpochBatches(images, labels, batch_size=8, seed=0, procs=procs)
        got = [y for _, y in batches.epoch(3)]
        assert batches.steps == len(got) == 5 and all(len(y) == 4 for y in got)  # 22 // 4
        shards.append(torch.cat(got))
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    procs = training.runtime.ProcessPlacement(0, 1, torch.device("cpu"))
    one = training.batches.EpochBatches(images, labels, batch_size=8, seed=0, procs=procs)
    left_out = [set(range(45)) - set(torch.cat([y for _, y in one.epoch(e)]).tolist()) for e in range(4)]
    assert all(len(s) == 5 for s in left_out) and len(set.union(*left_out)) > 5  # a new tail each epoch


def test_checkpoints_hold_cpu_tensors_and_no_generator_states(shared_folder_data, tmp_path):
    out = tmp_path / "run"
    train.main(run_args(shared_folder_data, out, "--epochs", "1"))
    last = torch.load(out / "last.pt", weights_only=True)
    assert "rng" not in last and set(last) >= training.checkpoints.CHECKPOINT_KEYS

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)

    assert all(t.device.type == "cpu" for t in tensors(last))
    assert training.checkpoints.on_cpu({"a": [torch.ones(1)], "b": 2})["b"] == 2


@pytest.mark.parametrize("content, reason", [(b"", "it is empty"), (b"\x00garbage" * 10, "not a readable")])
def test_corrupt_checkpoint_is_named_with_what_to_do(shared_folder_data, tmp_path, content, reason):
    out = tmp_path / "run"
    train.main(run_args(shared_folder_data, out, "--epochs", "1"))
    (out / "best.pt").write_bytes(content)
    with pytest.raises(SystemExit, match=f"best.pt .*{reason}.*delete") as err:
        train.main(["--out", str(out), "--resume", "--no-progress"])
    assert "weights_only=False" not in str(err.value)


def test_a_bit_flip_or_a_foreign_tensor_in_last_pt_is_named_not_trained_on(shared_folder_data, tmp_path):
    out = tmp_path / "run"
    train.main(run_args(shared_folder_data, out, "--epochs", "1"))
    good = (out / "last.pt").read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x10  # inside the tensors' bytes
    (out / "last.pt").write_bytes(bytes(flipped))
    with pytest.raises(SystemExit, match=r"last.pt is damaged: its .* fails its checksum.*delete"):
        train.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    saved = torch.load(io.BytesIO(good), weights_only=True)
    saved["model"]["head.weight"] = torch.zeros(3, 3)
    torch.save(saved, out / "last.pt")
    with pytest.raises(SystemExit, match=r"last.pt does not fit the model .*head.weight.*new --out"):
        train.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"])


def test_a_full_disk_stops_the_run_with_a_message_and_the_last_checkpoint_intact(
    shared_folder_data, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    train.main(run_args(shared_folder_data, out, "--epochs", "1"))
    before = (out / "last.pt").read_bytes()
    (out / ".last.pt.abc123.tmp").write_bytes(b"left by a killed run")

    def full_disk(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
            "writing file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        SystemExit,
        match=r"could not write .*\.pt: .*file write failed.*intact: free space "
        r".*continue with --resume",
    ):
        train.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert (out / "last.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))  # neither this run's nor the killed one's


def test_resume_honours_more_epochs_and_refuses_other_changes(shared_folder_data, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(run_args(shared_folder_data, out, "--epochs", "2"))
    with pytest.raises(SystemExit, match="cannot change --lr 0.1 .*run has 0.0005"):
        train.main(["--out", str(out), "--resume", "--lr", "0.1"])
    with pytest.raises(SystemExit, match="already trained 2 epochs"):
        train.main(["--out", str(out), "--resume", "--epochs", "1"])
    from conftest import make_folder_dataset

    other = make_folder_dataset(tmp_path / "other", seed=7)
    with pytest.raises(SystemExit, match="images in .*other are not the ones this run was trained on"):
        train.main(["--out", str(out), "--resume", "--data-dir", str(other)])
    train.main(["--out", str(out), "--resume", "--epochs", "3", "--no-progress"])
    assert "re-planned for 3 epochs" in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]


def test_extended_schedule_continues_from_the_new_plan():
    args = training.command_line.parse_args(["--epochs", "16"])
    opt = build_optimizer(torch.nn.Linear(2, 2), OptimizerSettings.of(vars(args)), torch.device("cpu"))
    opt.param_groups[0]["lr"] = 5e-6  # as a resumed optimizer holds it after both drops
    build_scheduler(opt, OptimizerSettings.of(vars(args)), steps_per_epoch=2, done_steps=2 * 12)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5)  # milestones 10 and 15: one drop


def test_bf16_only_where_it_is_native_and_faster(monkeypatch):
    cuda = training.runtime.ProcessPlacement(0, 1, torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert not cuda.use_bf16("auto") and cuda.use_bf16("on")  # a T4 or V100 emulates it
    cpu = training.runtime.ProcessPlacement(0, 1, torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(training.runtime, "cpu_bf16_speedup", lambda: 1.49)  # a Zen 4
    assert cpu.use_bf16("auto") and not cpu.use_bf16("off")
    assert cpu.bf16_words("auto") == "bf16 on (measured 1.49x float32's speed)"
    monkeypatch.setattr(training.runtime, "cpu_bf16_speedup", lambda: 0.56)  # a Xeon whose VM hides AMX
    assert not cpu.use_bf16("auto") and cpu.use_bf16("on")
    assert cpu.bf16_words("auto") == "bf16 off (measured 0.56x float32's speed)"
    assert cpu.bf16_words("on") == "bf16 on"
    assert not training.runtime.ProcessPlacement(0, 1, torch.device("mps")).use_bf16("auto")


def test_bf16_speed_is_measured_only_on_cpus_with_bf16_units(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    training.runtime.cpu_bf16_speedup.cache_clear()
    assert training.runtime.cpu_bf16_speedup() == 0.0 and not training.runtime.cpu_has_native_bf16()
    assert not training.runtime.ProcessPlacement(0, 1, torch.device("cpu")).use_bf16("auto")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    training.runtime.cpu_bf16_speedup.cache_clear()
    real_autocast = training.runtime.bf16_autocast

    @contextlib.contextmanager
    def slow_bf16(device, enabled):  # bf16 made 0.5 s slower a step, more than a whole step
        with real_autocast(device, enabled):  # takes on a loaded machine: the probe must see it
            yield
        if enabled:
            time.sleep(0.5)

    monkeypatch.setattr(training.runtime, "bf16_autocast", slow_bf16)
    training.runtime.cpu_bf16_speedup.cache_clear()
    speedup = training.runtime.cpu_bf16_speedup()
    training.runtime.cpu_bf16_speedup.cache_clear()
    assert 0 < speedup < 0.9
    assert not training.runtime.ProcessPlacement(0, 1, torch.device("cpu")).use_bf16("auto")
    training.runtime.cpu_bf16_speedup.cache_clear()


def test_process_group_backend_follows_the_device(monkeypatch):
    calls = []
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(training.runtime.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(training.runtime.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(training.runtime.dist, "get_world_size", lambda: 2)
    procs = training.runtime.start_processes("cpu")  # --device cpu under torchrun, GPUs or not
    assert calls == [("gloo", {})] and procs.world == 2
    assert isinstance(procs.attention_context(), type(torch.nn.attention.sdpa_kernel([])))
    cuda = training.runtime.ProcessPlacement(0, 1, torch.device("cuda"))
    assert cuda.attention_context().__class__.__name__ == "nullcontext"


def test_fused_adamw_on_the_cpu():
    args = training.command_line.parse_args([])
    opt = build_optimizer(torch.nn.Linear(2, 2), OptimizerSettings.of(vars(args)), torch.device("cpu"))
    assert opt.defaults["fused"]


def test_progress_bar_shows_the_last_step_of_a_short_epoch(capsys):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    procs = training.runtime.ProcessPlacement(0, 1, torch.device("cpu"))
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    batches = training.batches.EpochBatches(images, torch.arange(64) % 10, batch_size=16, seed=0, procs=procs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    from training.augment import DeviceAugment

    row = training.epoch.train_one_epoch(
        model,
        opt,
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
        batches.epoch(0),
        steps=batches.steps,
        augment=DeviceAugment([0.5] * 3, [0.25] * 3),
        generator=procs.generator(0),
        mixing=None,
        label_smoothing=0.0,
        bf16=False,
        procs=procs,
        show_progress=True,
        description="epoch 1/1",
    )
    err = capsys.readouterr().err
    assert "4/4" in err and f"loss={row['train_loss']:.3f}" in err


@pytest.mark.parametrize("extra", [["--amp", "on"], ["--amp", "off"], ["--compile", "aot_eager"]])
def test_autocast_and_compiled_runs_train(shared_folder_data, tmp_path, extra, monkeypatch):
    used = []
    real = training.runtime.bf16_autocast
    for module in (training.epoch, training.evaluation):  # the training and the evaluation steps
        monkeypatch.setattr(
            module, "bf16_autocast", lambda device, enabled: used.append(enabled) or real(device, enabled)
        )
    out = tmp_path / "run"
    result = train.main(run_args(shared_folder_data, out, "--epochs", "2", *extra))
    rows = read_metrics(out)
    assert all(math.isfinite(r["train_loss"]) for r in rows) and rows[1]["train_loss"] < rows[0]["train_loss"]
    assert result["val_acc"] == max(r["val_acc"] for r in rows)
    if "--amp" in extra:  # every training and evaluation step runs as asked
        assert used and set(used) == {extra[1] == "on"}


# ---------------------------------------------------------------- any dataset


def test_a_folder_of_48x48_images_trains_at_48(tmp_path):
    from conftest import make_folder_dataset

    root = make_folder_dataset(tmp_path / "big", per_class=8, size=48)
    out = tmp_path / "run"
    train.main(run_args(root, out, "--epochs", "1", "--val-size", "0.25", "--batch-size", "32", "--patch-size", "8"))
    config = json.loads((out / "export" / "config.json").read_text())
    assert config["image_size"] == 48 and config["patch_size"] == 8
    with pytest.raises(SystemExit, match="--patch-size 5 does not divide the 48x48 images .*1, 2, 3, 4, 6"):
        train.main(run_args(root, tmp_path / "bad", "--patch-size", "5", "--val-size", "0.25"))


def test_one_epoch_run_says_what_it_does_after_the_last_epoch(shared_folder_data, tmp_path, capsys):
    train.main(run_args(shared_folder_data, tmp_path / "run", "--epochs", "1"))
    out = capsys.readouterr().out
    assert out.index("evaluating the best checkpoint") < out.index("writing the export")
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert "1 epoch:" in card and "[1, 1]" not in card and "constant learning rate" in card


# ---------------------------------------------------------------- the budget recipe


def test_linear_schedule_factor_by_hand():
    # 100 steps, the first 10 of them warmup: the decay runs over the other 90.
    factor = lambda step: training.optimization.lr_factor(step, total=100, warmup=10, schedule="linear", milestones=[])
    warmup = [factor(s) for s in range(10)]
    assert warmup == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert factor(9) == factor(10) == 1.0  # the peak at the end of warmup
    assert factor(28) == pytest.approx(0.8)  # 18 of 90 decay steps done
    assert factor(55) == pytest.approx(0.5)  # half way through the decay
    assert factor(91) == pytest.approx(0.1)
    assert factor(99) == pytest.approx(1 / 90)  # the last step: one decay step left
    assert factor(100) == 0.0 and factor(150) == 0.0  # zero at the end, never negative
    decay = [factor(s) for s in range(10, 101)]
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert steps == pytest.approx([1 / 90] * 90)  # a straight line from 1 to 0
    # Without warmup the line starts at the peak on the very first step.
    no_warmup = [training.optimization.lr_factor(s, 4, 0, "linear", []) for s in range(5)]
    assert no_warmup == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def budget_optimizer(*flags):
    args = training.command_line.parse_args(["--recipe", "budget", "--lr", "1e-3", *flags])
    return args, build_optimizer(torch.nn.Linear(2, 2), OptimizerSettings.of(vars(args)), torch.device("cpu"))


def test_linear_schedule_learning_rates_and_fast_forward():
    # 10 epochs of 10 steps with 1 warmup epoch: total 100 steps, warmup 10.
    flags = ["--epochs", "10", "--warmup-epochs", "1"]
    args, opt = budget_optimizer(*flags)
    assert args.schedule == "linear"
    lrs = stepped_lrs(opt, build_scheduler(opt, OptimizerSettings.of(vars(args)), steps_per_epoch=10), 100)
    after = opt.param_groups[0]["lr"]
    assert lrs[0] == pytest.approx(1e-4) and lrs[4] == pytest.approx(5e-4)
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(5e-4) and lrs[99] == pytest.approx(1e-3 / 90)
    assert after == 0.0
    assert lrs[:10] == sorted(lrs[:10]) and lrs[10:] == sorted(lrs[10:], reverse=True)
    # A resumed run fast-forwards the new scheduler by the steps done: the same rates as
    # stepping from zero, even from an optimizer that holds a decayed rate.
    for done in (0, 5, 10, 37, 55, 99):
        args, opt = budget_optimizer(*flags)
        opt.param_groups[0]["lr"] = 1e-7
        scheduler = build_scheduler(opt, OptimizerSettings.of(vars(args)), steps_per_epoch=10, done_steps=done)
        resumed = stepped_lrs(opt, scheduler, 100 - done)
        assert resumed == pytest.approx(lrs[done:], rel=1e-12, abs=0), done
        assert opt.param_groups[0]["lr"] == 0.0
    args, opt = budget_optimizer(*flags)
    build_scheduler(opt, OptimizerSettings.of(vars(args)), steps_per_epoch=10, done_steps=100)
    assert opt.param_groups[0]["lr"] == 0.0


def test_budget_recipe_resolves_its_auto_values_from_epochs(tmp_path):
    from torchvision.transforms import v2

    args = training.command_line.parse_args(["--recipe", "budget", "--epochs", "50"])
    assert (args.warmup_epochs, args.policy) == (2, "trivialaugment")  # 5% of 50 is 2.5: round() gives 2
    assert isinstance(training.augment.build_policy(args.policy), v2.TrivialAugmentWide)
    args = training.command_line.parse_args(["--recipe", "budget", "--epochs", "20"])
    assert (args.warmup_epochs, args.policy) == (1, "none")
    assert training.augment.build_policy(args.policy) is None
    # warmup: 5% of the epochs, at least 1; the policy from 40 epochs on.
    for epochs, warmup, policy in [
        (1, 1, "none"),
        (10, 1, "none"),
        (39, 2, "none"),
        (40, 2, "trivialaugment"),
        (100, 5, "trivialaugment"),
        (200, 10, "trivialaugment"),
    ]:
        args = training.command_line.parse_args(["--recipe", "budget", "--epochs", str(epochs)])
        assert (args.warmup_epochs, args.policy) == (warmup, policy), epochs
    # Without --epochs: the recipe's 30 (warmup 1.5 rounds to 2), no policy.
    args = training.command_line.parse_args(["--recipe", "budget", "--data-dir", str(tmp_path)])
    assert (args.epochs, args.warmup_epochs, args.policy) == (30, 2, "none")
    assert (args.schedule, args.lr, args.weight_decay, args.decay_all) == ("linear", 5e-4, 0.05, False)
    assert (args.label_smoothing, args.mixup_alpha, args.cutmix_alpha, args.ema) == (0.1, 0.0, 0.0, 0.0)
    assert (args.dropout, args.attn_dropout, args.drop_path, args.patch_keep) == (0.0, 0.0, 0.1, 0.5)
    training.settings.check_settings(vars(args))
    assert training.augment.build_mixing(args.mixup_alpha, args.cutmix_alpha, 10) is None
    model = built_model(args)
    assert model.pos_drop.p == 0 and all(b.drop1.p == 0 and b.attn.dropout == 0 for b in model.blocks)
    assert model.blocks[0].drop_path.p == 0 and model.blocks[-1].drop_path.p == pytest.approx(0.1)


def test_budget_recipe_flags_win_over_its_values():
    args = training.command_line.parse_args(
        [
            "--recipe",
            "budget",
            "--epochs",
            "50",
            "--warmup-epochs",
            "0",
            "--policy",
            "none",
            "--patch-keep",
            "1",
            "--schedule",
            "cosine",
            "--drop-path",
            "0",
            "--ema",
            "0.99",
            "--decay-all",
        ]
    )
    assert (args.warmup_epochs, args.policy, args.patch_keep, args.schedule) == (0, "none", 1.0, "cosine")
    assert (args.drop_path, args.ema, args.decay_all, args.epochs) == (0.0, 0.99, True, 50)
    args = training.command_line.parse_args(
        ["--recipe", "budget", "--epochs", "20", "--warmup-epochs", "0.5", "--policy", "autoaugment"]
    )
    assert (args.warmup_epochs, args.policy) == (0.5, "autoaugment")
    # An 'auto' value follows only the recipe that has it.
    assert training.command_line.parse_args(["--recipe", "strong", "--epochs", "50"]).warmup_epochs == 10
    assert training.command_line.parse_args(["--epochs", "50"]).policy == "none"


def recording_lrs(monkeypatch) -> list[float]:
    """The learning rate of every optimizer step of train.main's epochs."""
    lrs = []
    real = training.epoch.train_one_epoch

    def recording(model, optimizer, scheduler, batches, **kwargs):
        def batches_with_lr():
            for batch in batches:
                lrs.append(optimizer.param_groups[0]["lr"])  # what this step's optimizer.step() uses
                yield batch

        return real(model, optimizer, scheduler, batches_with_lr(), **kwargs)

    monkeypatch.setattr(training.trainer, "train_one_epoch", recording)
    return lrs


def recording_tokens(monkeypatch) -> list[tuple[bool, int]]:
    """(training?, tokens) of every batch that reaches the first block of train.main's model."""
    seen = []
    real = training.trainer.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append((m.training, a[0].shape[1])))
        return model

    monkeypatch.setattr(training.trainer, "build_model", build)
    return seen


def test_budget_run_trains_on_half_the_patches_and_resume_replans_grown_epochs(
    shared_folder_data, tmp_path, monkeypatch, capsys
):
    # 130 training images in batches of 64: 2 steps an epoch. No warmup, so that the
    # linear decay over the planned steps can be read off by hand.
    out = tmp_path / "run"
    lrs, tokens = recording_lrs(monkeypatch), recording_tokens(monkeypatch)
    train.main(run_args(shared_folder_data, out, "--recipe", "budget", "--epochs", "1", "--warmup-epochs", "0"))
    assert lrs == pytest.approx([5e-4, 2.5e-4])  # planned for 2 steps
    assert {t for training, t in tokens if training} == {33}  # 32 of 64 patches + class token
    assert {t for training, t in tokens if not training} == {65}
    assert sum(training for training, _ in tokens) == 2
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["args"]["patch_keep"] == 0.5 and last["args"]["policy"] == "none"

    lrs.clear()
    capsys.readouterr()
    train.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert "re-planned for 2 epochs" in capsys.readouterr().out
    # Re-planned for 4 steps: steps 3 and 4 of the line 1, 0.75, 0.5, 0.25 (the old plan
    # would have given 0 and 0).
    assert lrs == pytest.approx([2.5e-4, 1.25e-4])
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["lr"] == pytest.approx(5e-4) and rows[1]["lr"] == pytest.approx(2.5e-4)
    assert "note" not in rows[0] and rows[1]["note"].startswith("resumed with --epochs 2 instead of 1")
    card = (out / "export" / "README.md").read_text()
    assert "epoch 2: resumed with --epochs 2 instead of 1" in card  # the card says so
    # No command replays a schedule re-planned part-way: the card says so instead of one.
    assert "Command: no single command: it was resumed with a different --epochs" in card
    assert "python train.py" not in card and "--resume" not in card
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["args"]["epochs"] == 2
    assert last["optimizer"]["param_groups"][0]["lr"] == 0.0  # at zero after the last step
    training = json.loads((out / "export" / "training.json").read_text())
    assert training["epochs"] == 2 and training["command"] is None

    before = (out / "last.pt").read_bytes()
    with pytest.raises(SystemExit, match=r"--epochs 1, but the run in .*run has already trained 2 epochs"):
        train.main(["--out", str(out), "--resume", "--epochs", "1"])
    assert (out / "last.pt").read_bytes() == before and len(read_metrics(out)) == 2


def test_budget_run_with_ema_resumes_bit_identically(shared_folder_data, tmp_path, monkeypatch):
    flags = ("--recipe", "budget", "--epochs", "2", "--ema", "0.9", "--seed", "3", "--amp", "off")
    result_a = train.main(run_args(shared_folder_data, tmp_path / "a", *flags))

    result_b = interrupted_then_resumed(run_args(shared_folder_data, tmp_path / "b", *flags), monkeypatch)

    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["args"]["ema"] == b["args"]["ema"] == 0.9
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    # The average is a real one, carried across the resume: 2 epochs of 2 steps averaged.
    assert int(b["ema"]["n_averaged"]) == 4
    assert any(not torch.equal(b["ema"][f"module.{k}"], v) for k, v in b["model"].items())
    best_a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    best_b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)
    assert best_a["epoch"] == best_b["epoch"]
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))
    assert result_a["val_acc"] == result_b["val_acc"]
    # Each epoch scores the trained weights beside their average; the card compares the two.
    data = load_training_data(shared_folder_data, 30, 3)
    scorer = training.evaluation.Evaluator(a["mean"], a["std"], 64, torch.device("cpu"), False)
    for part, key in (("model", "val_acc_without_ema"), ("ema", "val_acc")):
        model = ViT(dim=64, depth=2, heads=4, mlp_dim=128)
        model.load_state_dict({k.removeprefix("module."): v for k, v in a[part].items() if k != "n_averaged"})
        scored = scorer.evaluate(model, data.images[data.val_idx], data.labels[data.val_idx])
        assert scored.acc == pytest.approx(read_metrics(tmp_path / "a")[-1][key]), part
    best = read_metrics(tmp_path / "a")[result_a["best_epoch"] - 1]
    card = (tmp_path / "a" / "export" / "README.md").read_text()
    assert (
        f"| EMA | the exported weights are the EMA (decay 0.9) of the trained ones, which scored "
        f"{100 * best['val_acc_without_ema']:.2f}% at that epoch against the EMA's "
        f"{100 * best['val_acc']:.2f}% |" in card
    )
