"""The model's computation graph as a picture (torchview, drawn by graphviz's `dot`) and
its layer table (torchinfo), traced from the real module with one input. `python -m tools.draw_figures` draws
docs/model_graph.png with it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch


def dot_missing() -> str | None:
    """Why the graph cannot be drawn here, or None when it can."""
    if shutil.which("dot") is None:
        return "graphviz's `dot` is not installed (apt-get install graphviz; on a Space packages.txt installs it)"
    return None


def draw(model: torch.nn.Module, image_size: int, path: str | os.PathLike) -> Path:
    """Trace the model on one (1, 3, size, size) input and draw it, top to bottom, at
    module depth 1 (the patch embedding, each block, the head) as a PNG at `path`."""
    from torchview import draw_graph

    if (reason := dot_missing()) is not None:
        raise RuntimeError(reason)
    graph = draw_graph(
        model, input_size=(1, 3, image_size, image_size), depth=1, graph_dir="TB", hide_inner_tensors=True, device="cpu"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        rendered = graph.visual_graph.render(Path(scratch) / "graph", format="png", cleanup=True)
        os.chmod(rendered, 0o644)
        os.replace(rendered, path)  # whole or not at all
    return path


def layer_table(model: torch.nn.Module, image_size: int) -> str:
    """torchinfo's table: each layer with its output shape and parameter count (without
    its "mult-adds" line, which misses the attention inside nn.MultiheadAttention and
    prints its unit as an enum)."""
    from torchinfo import summary

    table = str(
        summary(
            model,
            input_size=(1, 3, image_size, image_size),
            depth=3,
            verbose=0,
            col_names=("output_size", "num_params"),
            device="cpu",
        )
    )
    return "\n".join(line for line in table.splitlines() if "mult-adds" not in line)
