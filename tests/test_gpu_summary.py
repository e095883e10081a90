"""The GPU check's summary, read from a folder laid out as scripts/gpu_check.sh leaves it."""

import json

import pytest

from tools.gpu_summary import STAGES, main, summary


def write_run(root, name: str, seconds: float) -> None:
    (root / name / "export").mkdir(parents=True)
    (root / f"{name}.log").write_text("...; bf16 on (native); 2 epochs of 351 steps\n")
    rows = [{"seconds": 9.0, "val_acc": 0.41, "peak_memory_gib": 1.5}, {"seconds": seconds, "val_acc": 0.5}]
    (root / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / name / "export" / "training.json").write_text(json.dumps({"settings": {"batch_size": 128}}))


def test_every_stage_passed_gives_each_runs_speed(tmp_path):
    (tmp_path / "stages.txt").write_text("".join(f"{name} ok\n" for name in STAGES))
    write_run(tmp_path, "policy-device", 4.0)
    text, passed = summary(tmp_path)
    assert passed and text.endswith("GPU CHECK PASSED")
    line = next(line for line in text.splitlines() if line.startswith("policy-device "))
    assert "2 epochs; first 9.0 s, last 4.0 s (0.250 epochs/s, 11,232 img/s" in line and "bf16 on" in line
    assert "policy-workers" in text and "no epoch finished" in text


def test_a_failed_or_unfinished_stage_fails_the_check(tmp_path, capsys):
    (tmp_path / "stages.txt").write_text("tests ok\neager FAILED\n")
    text, passed = summary(tmp_path)
    assert not passed and "eager FAILED" in text and "bench did not finish" in text
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path)])
    assert stopped.value.code == 1 and "GPU CHECK FAILED" in capsys.readouterr().out
