"""What the device changes, checked on the device under test (the `device` fixture: the
CPU here and in CI, a GPU under scripts/gpu_check.sh): the attention kernel and its
dropout, the weight average, the evaluator, the process's device setup, and a short run
that stops and resumes."""

import torch
import torch.nn.functional as F
from conftest import interrupted_then_resumed, read_metrics, run_args
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import train
import training.runtime
import vit_model
from tools.attention_kernels import attention_calls, fused_operators
from training.evaluation import Evaluator
from training.optimization import WeightAverage
from vit_model import ViT, attention


def test_training_attention_drops_inside_the_fused_kernel_off_the_cpu(device, monkeypatch):
    """A GPU hands the weights' dropout to scaled_dot_product_attention; a CPU writes the
    product out with the cheap exact dropout; evaluation drops nothing anywhere."""
    asked = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(
        vit_model.F, "scaled_dot_product_attention", lambda *a, **kw: asked.append(kw["dropout_p"]) or real(*a, **kw)
    )
    model = ViT(dim=64, depth=2, heads=4, mlp_dim=128, attn_dropout=0.2).to(device)
    x = torch.randn(4, 3, 32, 32, device=device)
    model.train()(x)
    assert asked == ([] if device.type == "cpu" else [0.2, 0.2])
    asked.clear()
    model.eval()(x)
    assert asked == [0.0, 0.0]


def test_attention_dropout_on_the_device_drops_and_stays_unbiased(device):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4, dropout=0.2, batch_first=True).to(device)
    x = torch.randn(64, 65, 64, device=device)
    with torch.no_grad():
        expected, _ = attention(x, mha, training=False)
        draws = torch.stack([attention(x, mha, training=True)[0] for _ in range(100)])
    assert (draws[0] - expected).abs().mean() > 0.01  # one draw drops weights
    # Inverted dropout keeps the expectation: 100 draws average close to no dropout.
    assert (draws.mean(0) - expected).abs().mean() < 0.25 * (draws[0] - expected).abs().mean()


def test_a_gpu_training_step_runs_a_fused_attention_kernel(device):
    procs = training.runtime.ProcessPlacement(0, 1, device)
    calls = attention_calls(procs, procs.use_bf16("auto"), steps=1, batch_size=8)
    if device.type == "cpu":
        assert fused_operators(calls) == []  # the written-out product, for the cheap dropout
    else:
        assert fused_operators(calls), calls


def test_weight_average_computes_what_averaged_model_does_without_waiting(device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6)).to(device)
    ours = WeightAverage(model, 0.9)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 6, device=device))  # moves the batch-norm statistics and count
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")  # any read back to the host raises
        try:
            ours.update(model)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        torchs.update_parameters(model)
    theirs = torchs.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k].to(v.device)) for k, v in ours.state_dict().items())
    reloaded = WeightAverage(model, 0.9)
    reloaded.load_state_dict(ours.state_dict())
    assert reloaded.updates == 3  # a resumed average goes on averaging rather than copying


def test_evaluator_on_the_device_agrees_with_the_cpu(device):
    torch.manual_seed(0)
    model = ViT(dim=64, depth=2, heads=4, mlp_dim=128).eval()
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    on_cpu = Evaluator([0.5] * 3, [0.25] * 3, 8, torch.device("cpu"), False).logits(model, images)
    here = Evaluator([0.5] * 3, [0.25] * 3, 8, device, False).logits(model.to(device), images)
    assert here.device.type == "cpu"
    assert torch.allclose(here, on_cpu, atol=1e-2)  # TensorFloat-32 on a GPU


def test_the_process_takes_its_device_and_tf32_only_on_a_gpu(device, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    before = torch.get_float32_matmul_precision()
    try:
        procs = training.runtime.start_processes(str(device))
        assert procs.device.type == device.type
        if device.type == "cuda":
            assert torch.cuda.current_device() == procs.device.index
            assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.benchmark
        else:
            assert torch.get_float32_matmul_precision() == before and not torch.backends.cudnn.benchmark
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_short_run_on_the_device_resumes_where_it_stopped(device, shared_folder_data, tmp_path, monkeypatch):
    flags = ("--device", str(device), "--epochs", "2", "--ema", "0.9", "--seed", "1")
    result_a = train.main(run_args(shared_folder_data, tmp_path / "a", *flags))
    result_b = interrupted_then_resumed(run_args(shared_folder_data, tmp_path / "b", *flags), monkeypatch)
    rows = read_metrics(tmp_path / "b")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(("peak_memory_gib" in r) == (device.type == "cuda") for r in rows)
    assert result_a["machine"] == training.runtime.ProcessPlacement(0, 1, torch.device(device)).machine()
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        for key, value in a[part].items():
            if device.type == "cpu":  # bit-identical on a CPU
                assert torch.equal(value, b[part][key]), (part, key)
            else:  # a GPU's attention backward may sum in another order
                assert torch.allclose(value, b[part][key], atol=1e-4, rtol=1e-3), (part, key)
    assert result_b["best_epoch"] in (1, 2)
