"""settings.py and the run's guards: numbers that are no numbers, and a run whose loss
stops being one, end with one message before anything untrustworthy is written."""

import pytest
from conftest import run_args

import train
import training.command_line


@pytest.mark.parametrize(
    "flag, value",
    [("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"), ("--warmup-epochs", "nan"), ("--momentum", "inf")],
)
def test_flags_that_are_no_finite_number_are_refused(flag, value, folder_data, tmp_path):
    with pytest.raises(SystemExit, match=f"{flag} must be a finite number, got {value}"):
        train.main(run_args(folder_data, tmp_path / "run", flag, value))
    assert not (tmp_path / "run").exists()


def test_val_size_nan_is_refused_by_its_parser(capsys):
    with pytest.raises(SystemExit):
        training.command_line.parse_args(["--val-size", "nan"])
    assert "--val-size: nan must be a fraction" in capsys.readouterr().err


def test_a_diverged_run_stops_at_once_and_writes_no_model(shared_folder_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(
        SystemExit, match="loss became NaN or infinite in epoch 1 .*diverged, and nothing was saved. Lower --lr"
    ):
        train.main(run_args(shared_folder_data, out, "--epochs", "2", "--lr", "1e6"))
    assert not (out / "best.pt").exists() and not (out / "export").exists()
    assert not (out / "last.pt").exists()


def test_a_resumed_run_with_policy_workers_trains_what_an_unbroken_one_does(shared_folder_data, tmp_path, monkeypatch):
    import torch
    from conftest import interrupted_then_resumed

    flags = ("--epochs", "2", "--policy", "trivialaugment", "--workers", "1", "--seed", "2")
    train.main(run_args(shared_folder_data, tmp_path / "a", *flags))
    interrupted_then_resumed(run_args(shared_folder_data, tmp_path / "b", *flags), monkeypatch)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_keeps_the_runs_own_amp_unless_another_is_given(shared_folder_data, tmp_path):
    import torch

    out = tmp_path / "run"
    train.main(run_args(shared_folder_data, out, "--epochs", "1", "--amp", "off"))
    train.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert torch.load(out / "last.pt", weights_only=True)["args"]["amp"] == "off"
    train.main(["--out", str(out), "--resume", "--epochs", "3", "--amp", "on", "--no-progress"])
    assert torch.load(out / "last.pt", weights_only=True)["args"]["amp"] == "on"


@pytest.mark.parametrize("under", ["", "inside"])
def test_an_out_that_is_a_file_or_under_one_is_refused_before_training(under, folder_data, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match=f"--out .*: {blocker} is a file, not a folder"):
        train.main(run_args(folder_data, blocker / under if under else blocker))


def test_ctrl_c_says_how_to_continue_instead_of_a_traceback(shared_folder_data, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "train.py", *run_args(shared_folder_data, out, "--epochs", "50")],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in err and "continue it with --resume" in err


def test_distillation_flags_without_a_teacher_are_refused_not_ignored(folder_data, tmp_path):
    with pytest.raises(SystemExit, match="--distill and --temperature shape distillation: give a --teacher"):
        train.main(run_args(folder_data, tmp_path / "run", "--distill", "soft"))
