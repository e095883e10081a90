"""bench.py: the naive baseline computes what the project computes, and a tiny run
yields a complete, sane result. No timing is asserted: machines are noisy."""

import json
import math

import pytest
import torch

import tools.bench
import tools.contenders
from vit_model import ViT, count_parameters, patchify


@pytest.mark.parametrize("patch_size", [1, 4, 8])
def test_naive_patchify_equals_data_patchify(patch_size):
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(tools.contenders.naive_patchify(images, patch_size), patchify(images, patch_size))


def test_naive_vit_matches_project_vit():
    project = ViT().eval()
    naive = tools.contenders.NaiveViT().eval()
    naive.load_state_dict(project.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(naive(x), project(x))


def test_timm_vit_has_the_project_size():
    project = ViT()
    assert count_parameters(tools.contenders.timm_vit(project, 0.2)) == count_parameters(project)


def test_tiny_run_writes_complete_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    tools.bench.main(
        [
            "--device",
            "cpu",
            "--threads",
            "1",
            "--batch-size",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--infer-batch",
            "4",
            "--infer-reps",
            "1",
            "--latency-reps",
            "1",
            "--json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert set(result) == {"project", "timm", "naive", "cnn", "setup"}
    for name in tools.bench.CONTENDERS:
        entry = result[name]
        for key in (
            "train_img_per_s",
            "train_ms_per_step",
            "infer_ms_per_img",
            "infer_ms_batch1",
            "gflops_per_img_forward",
            "train_tflops",
            "train_speed_vs_project",
            "peak_tflops",
            "train_fraction_of_matmul_peak",
        ):
            assert math.isfinite(entry[key]) and entry[key] > 0, (name, key, entry[key])
        # The ViT's size in three of them; the cnn recipe's CNN (trainable: the whitening
        # stem's filters and BatchNorm's scales stay fixed) in the fourth.
        assert entry["params"] == (4_604_450 if name == "cnn" else 3_195_146)
    assert result["project"]["train_speed_vs_project"] == 1.0
    assert result["naive"]["bf16"] is False
    # Each contender is measured against the peak of its own dtype.
    peaks = result["setup"]["matmul_peak_tflops"]
    assert result["naive"]["peak_tflops"] == peaks["float32"]
    project_dtype = "bfloat16" if result["project"]["bf16"] else "float32"
    assert result["project"]["peak_tflops"] == result["timm"]["peak_tflops"] == peaks[project_dtype]
    assert result["cnn"]["bf16"] == result["project"]["bf16"] and "CNN" in result["cnn"]["model"].upper()
    for entry in (result["project"], result["timm"], result["naive"]):
        assert entry["train_fraction_of_matmul_peak"] == pytest.approx(entry["train_tflops"] / entry["peak_tflops"])
    printed = capsys.readouterr().out
    assert "timm: training" in printed and "naive: training" in printed and "cnn: training" in printed


def test_bad_settings_fail_with_one_message():
    with pytest.raises(SystemExit, match="--warmup"):
        tools.bench.main(["--steps", "2", "--warmup", "3"])


def test_naive_vit_uses_torchs_stock_dropout():
    naive = tools.contenders.NaiveViT()
    dropouts = [m for m in naive.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 1 + 6 * 3 and all(type(m) is torch.nn.Dropout for m in dropouts)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(naive.train()(x), naive(x))
