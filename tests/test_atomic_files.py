"""atomic_files.py: files written whole or not at all, and strict JSON."""

import json

import pytest

import common.atomic_files


def test_atomic_save_leaves_nothing_on_failure(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    # torch.save reports a full disk as a RuntimeError: a failed write, with the file named.
    with pytest.raises(common.atomic_files.WriteError, match=r"could not write .*out.pt: boom"):
        common.atomic_files.atomic_save({"x": Unpicklable()}, tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        common.atomic_files.atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]
    common.atomic_files.atomic_write(path, lambda f: f.write(b"new\n"))
    assert path.read_text() == "new\n" and list(tmp_path.iterdir()) == [path]


def test_atomic_write_leaves_a_file_others_can_read(tmp_path):
    path = tmp_path / "model.safetensors"
    common.atomic_files.atomic_write(path, lambda f: f.write(b"weights"))
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_json_text_is_strict_json_with_null_for_non_finite_numbers():
    row = {"epoch": 3, "train_loss": float("nan"), "val": [0.5, float("inf"), (float("-inf"), 1)]}
    text = common.atomic_files.json_text(row)
    # Python's json reads NaN/Infinity back without complaint; a browser's JSON.parse does not.
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"epoch": 3, "train_loss": None, "val": [0.5, None, [None, 1]]}
    assert common.atomic_files.json_text({"a": 1}, indent=1) == '{\n "a": 1\n}'
