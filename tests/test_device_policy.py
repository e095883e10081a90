"""The per-image policies drawn for a whole batch on the device: each operation against
torchvision's own, image by image; the draws against torchvision's probabilities; and a
run that trains and resumes with the policy on the device."""

import collections

import pytest
import torch
from conftest import interrupted_then_resumed, run_args
from torchvision.transforms import v2

import train
import training.command_line
import training.trainer
from data import load_training_data
from training.augment import DeviceAugment
from training.checkpoints import RunState
from training.device_policy import OPERATIONS, POLICY_SOURCES, DevicePolicy, apply_rows
from training.runtime import ProcessPlacement


def sample_images() -> torch.Tensor:
    """Noise (every value, every edge) and smooth ramps (a narrow range, as photos have)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    ramp = torch.arange(32).view(1, 1, 1, 32) + torch.arange(32).view(1, 1, 32, 1)
    smooth = ramp * torch.rand(8, 3, 1, 1, generator=g) * 3 + torch.rand(8, 3, 1, 1, generator=g) * 80
    return torch.cat([noise, smooth.clamp(0, 255).to(torch.uint8)])


@pytest.mark.parametrize("name", sorted(POLICY_SOURCES))
def test_every_operation_at_every_magnitude_is_torchvisions(name, device):
    policy, reference = DevicePolicy(name), POLICY_SOURCES[name]()
    images = sample_images()
    rows = torch.arange(len(policy.table.rows)).repeat_interleave(len(images))
    batch = images.repeat(len(policy.table.rows), 1, 1, 1)  # every image with every row, in one call
    got = apply_rows(batch.to(device), rows.to(device), policy.table.tensors(device)).cpu()
    for row, (operation, magnitude) in enumerate(policy.table.rows):
        # torchvision's operations treat each image of a batch alone: one call per row
        want = reference._apply_image_or_video_transform(
            images, operation, magnitude, interpolation=reference.interpolation, fill=reference._fill
        )
        mine = got[row * len(images) : (row + 1) * len(images)]
        difference = (mine.int() - want.int()).abs()
        if device.type == "cpu":
            assert torch.equal(mine, want), (operation, magnitude, difference.max())
        else:  # a GPU may fuse a blend's multiply-add: one level, rarely
            assert difference.max() <= 1 and (difference > 0).float().mean() < 0.01, (operation, magnitude)


@pytest.mark.parametrize("name", sorted(POLICY_SOURCES))
def test_a_batch_is_drawn_without_waiting_for_the_host(name, device):
    """On a GPU, any operation that waits for the host raises; on a CPU this checks only
    that the batch stays on its device as uint8."""
    policy = DevicePolicy(name)
    images = sample_images().to(device)
    generator = torch.Generator(device).manual_seed(0)
    policy(images, generator)  # the tables' one copy to the device
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        out = policy(images, generator)
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert out.device == images.device and out.dtype == torch.uint8


def test_each_image_draws_its_own_operation_reproducibly():
    images = sample_images()[:1].expand(64, -1, -1, -1).contiguous()
    policy = DevicePolicy("trivialaugment")
    out = policy(images, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert len({bytes(image.numpy()) for image in out}) > 30  # one draw per image, not per batch
    assert torch.equal(policy(images, torch.Generator().manual_seed(1)), out)
    assert not torch.equal(policy(images, torch.Generator().manual_seed(2)), out)


def test_trivialaugment_draws_operation_bin_and_sign_uniformly():
    policy = DevicePolicy("trivialaugment")
    n = 60_000
    rows = policy.rows(n, torch.Generator().manual_seed(0))[0]
    drawn = collections.Counter(policy.table.rows[r][0] for r in rows.tolist())
    space = list(v2.TrivialAugmentWide._AUGMENTATION_SPACE)
    assert set(drawn) == set(space)
    for operation in space:
        assert drawn[operation] / n == pytest.approx(1 / len(space), abs=0.006), operation
    rotations = [policy.table.rows[r][1] for r in rows.tolist() if policy.table.rows[r][0] == "Rotate"]
    assert sum(m < 0 for m in rotations) / len(rotations) == pytest.approx(0.5 * 30 / 31, abs=0.03)
    assert len(set(rotations)) == 61  # 31 bins, each sign but zero's


def test_autoaugment_draws_torchvisions_sub_policies_with_their_probabilities():
    policy = DevicePolicy("autoaugment")
    subs = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)._policies
    n = 100_000
    rows = policy.rows(n, torch.Generator().manual_seed(0))
    for stage in range(2):
        expected = collections.Counter()
        for sub in subs:
            operation, probability, _ = sub[stage]
            expected[operation] += probability / len(subs)
            expected["Identity"] += (1 - probability) / len(subs)
        drawn = collections.Counter(policy.table.rows[r][0] for r in rows[stage].tolist())
        for operation, share in expected.items():
            assert drawn[operation] / n == pytest.approx(share, abs=0.006), (stage, operation)
    # Where the policy names an operation at a magnitude, that magnitude is the one drawn.
    magnitudes = {m for r in rows[1].tolist() for op, m in [policy.table.rows[r]] if op == "TranslateX"}
    named = {bin_ for stages in subs for op, _, bin_ in stages[1:] if op == "TranslateX"}
    assert {abs(m) for m in magnitudes} == {float(torch.linspace(0, 150 / 331 * 32, 10)[b]) for b in named}


def test_randaugment_applies_two_operations_at_its_fixed_magnitude():
    policy = DevicePolicy("randaugment")
    rows = policy.rows(5000, torch.Generator().manual_seed(0))
    assert rows.shape == (2, 5000)
    brightness = {policy.table.rows[r][1] for r in rows.flatten().tolist() if policy.table.rows[r][0] == "Brightness"}
    assert sorted(brightness) == pytest.approx([-0.9 * 9 / 30, 0.9 * 9 / 30])


def test_a_batch_with_every_operation_at_once_is_each_image_alone():
    policy = DevicePolicy("trivialaugment")
    table = policy.table.tensors(torch.device("cpu"))
    images = sample_images()
    per_operation = [next(r for r, (op, m) in enumerate(policy.table.rows) if op == name) for name in OPERATIONS[:14]]
    rows = torch.tensor([per_operation[i % len(per_operation)] for i in range(len(images))])
    together = apply_rows(images, rows, table)
    for i, row in enumerate(rows):
        assert torch.equal(together[i], apply_rows(images[i : i + 1], row.view(1), table)[0]), OPERATIONS[i % 14]


def test_the_policy_runs_on_the_device_on_a_gpu_or_when_asked():
    def on_device(*flags: str, device: str) -> bool:
        settings = training.trainer.TrainerSettings.of(vars(training.command_line.parse_args(list(flags))))
        return training.trainer.policy_runs_on_device(settings, torch.device(device))

    assert not on_device("--policy", "trivialaugment", device="cpu")  # auto: workers on a CPU
    assert on_device("--policy", "trivialaugment", device="cuda")
    assert on_device("--policy", "trivialaugment", "--policy-on", "device", device="cpu")
    assert not on_device("--policy", "autoaugment", "--policy-on", "workers", device="cuda")
    assert not on_device("--policy-on", "device", device="cpu")  # no policy: nothing to place


def test_a_run_with_the_policy_on_the_device_trains_and_resumes_bit_identically(
    shared_folder_data, tmp_path, monkeypatch, capsys
):
    flags = ("--epochs", "2", "--seed", "4", "--policy", "trivialaugment", "--policy-on", "device", "--amp", "off")
    train.main(run_args(shared_folder_data, tmp_path / "a", *flags))
    assert "trivialaugment drawn for each batch on the cpu" in capsys.readouterr().out
    interrupted_then_resumed(run_args(shared_folder_data, tmp_path / "b", *flags), monkeypatch)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["args"]["policy_on"] == "device"
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_the_trainer_draws_the_policy_before_the_flip_and_crop(shared_folder_data):
    args = training.command_line.parse_args(
        ["--policy", "autoaugment", "--policy-on", "device", "--dim", "64", "--depth", "1", "--heads", "4"]
    )
    data = load_training_data(shared_folder_data, 30, 0)
    state = RunState(settings=vars(args).copy(), mean=data.mean, std=data.std)
    procs = ProcessPlacement(0, 1, torch.device("cpu"))
    trainer = training.trainer.Trainer.build(
        training.trainer.TrainerSettings.of(vars(args)), data, state, None, None, procs
    )
    assert trainer.batches.loader is None  # no workers: the uint8 images stay on the device
    images = data.images[:16]
    got = trainer.augment(images, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    by_hand = DeviceAugment(data.mean, data.std)(DevicePolicy("autoaugment")(images, generator), generator)
    assert torch.equal(got, by_hand)
