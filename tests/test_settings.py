"""settings.py and the run's guards: numbers that are no numbers, and a run whose loss
stops being one, end with one message before anything untrustworthy is written."""

import pytest

import train
from conftest import run_args


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"),
                                         ("--warmup-epochs", "nan"), ("--momentum", "inf")])
def test_flags_that_are_no_finite_number_are_refused(flag, value, folder_data, tmp_path):
    with pytest.raises(SystemExit, match=f"{flag} must be a finite number, got {value}"):
        train.main(run_args(folder_data, tmp_path / "run", flag, value))
    assert not (tmp_path / "run").exists()


def test_val_size_nan_is_refused_by_its_parser(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--val-size", "nan"])
    assert "--val-size: nan must be a fraction" in capsys.readouterr().err


def test_a_diverged_run_stops_at_once_and_writes_no_model(shared_folder_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="loss became NaN or infinite in epoch 1 .*diverged, and "
                                         "nothing was saved. Lower --lr"):
        train.main(run_args(shared_folder_data, out, "--epochs", "2", "--lr", "1e6"))
    assert not (out / "best.pt").exists() and not (out / "export").exists()
    assert not (out / "last.pt").exists()
