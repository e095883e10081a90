"""The page's tabs below the answer that stand on their own: what the model is, how it
trained, the two models compared, the visitor's own classes, the augmentation and the
patches. app.py lays out the page and wires the events."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from space import own_classes
from space.components import answers
from space.endpoints import Endpoints
from space.model_source import Loaded
from space.model_text import results_markdown


def model_tab(loaded: Loaded, out: Path) -> None:
    """The computation graph drawn from the real module, the layer table, the size."""
    from space import model_graph

    model = loaded.model
    if model is None:
        gr.Markdown("No trained model is loaded.")
        return
    parameters = sum(p.numel() for p in model.parameters())
    gr.Markdown(
        f"**{parameters:,} parameters.** The graph is traced from the loaded module "
        f"with one {model.image_size}x{model.image_size} input (torchview, drawn by "
        "graphviz); the table lists each layer's output shape and parameters (torchinfo)."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=240):
            try:  # a picture of the model is worth having, not worth failing to start over
                graph = model_graph.draw(model, model.image_size, out / "model_graph.png")
                gr.Image(str(graph), label="Computation graph", height=900, buttons=["fullscreen"])
            except Exception as err:
                gr.Markdown(f"The computation graph cannot be drawn here: {err}.")
        with gr.Column(scale=2):
            # Plain preformatted text: all lines drawn (a code editor draws those in view).
            gr.Markdown(f"```text\n{model_graph.layer_table(model, model.image_size)}\n```")


def own_classes_tab(ends: Endpoints, seen: gr.Image) -> tuple[tuple, tuple]:
    """Name 2-5 classes, drop their photos, train a probe on the frozen features of the ViT
    (or of the CNN, where one is loaded); returns the wiring of /own and of /own_map."""
    gr.Markdown(
        f"Teach a model your own classes: name {own_classes.MIN_CLASSES} to {own_classes.MAX_CLASSES} "
        f"(comma-separated), drop {own_classes.MIN_PHOTOS} to {own_classes.MAX_PHOTOS} photos of each "
        "in the boxes in the same order, and train. A linear layer learns your classes from the "
        "features the model's head reads (a linear probe; the model itself stays as it is), in about "
        "a second, and a map shows where in each later photo it finds its answer. Your classifier is "
        "yours alone: no other visitor sees it, and it is gone when you close the page."
    )
    with gr.Row():
        names = gr.Textbox(label="Class names, comma-separated", placeholder="ant, bee", scale=3)
        # Without a CNN there is nothing to choose: the ViT's features it is.
        model = gr.Radio(list(own_classes.MODELS), value="ViT", label="Features of", visible=ends.cnn is not None)
    with gr.Row():
        uploads = [
            gr.File(
                file_count="multiple",
                file_types=["image"],
                label=f"Photos of class {k + 1}",
                min_width=160,
                elem_id=f"own-files-{k + 1}",
            )
            for k in range(own_classes.MAX_CLASSES)
        ]
    train = gr.Button("Train my classifier", variant="primary")
    status = gr.Markdown(label="Your classifier's training", show_label=False)
    mine = gr.State(None)
    with gr.Row(equal_height=False):
        label = gr.Label(num_top_classes=own_classes.MAX_CLASSES, label="Your classifier", elem_id="own-label")
        with gr.Column():
            picture = gr.Image(label="Your classifier's map", format="png", height=300, elem_id="own-map")
            caption = gr.Markdown(label="Your classifier's map caption", show_label=False)
    common = dict(preprocess=False, concurrency_id="app")
    trained = train.click(
        answers(ends.train_own), [names, model, *uploads], [mine, status], api_visibility="private", **common
    )
    trained.success(answers(ends.own_answer), [seen, mine], [label], api_visibility="private", **common)
    # Named apart: gradio would name it after the function, leaving the public one "own_map_1".
    trained.success(
        answers(ends.own_map),
        [seen, mine],
        [picture, caption],
        api_name="trained_own_map",
        api_visibility="private",
        **common,
    )
    own = (ends.own_answer, [seen, mine], [label], [], "own")
    return own, (ends.own_map, [seen, mine], [picture, caption], [], "own_map")


def comparison_tab(demo: gr.Blocks, ends: Endpoints) -> None:
    """Both models on the bundled validation sample, filled when the page loads."""
    text = gr.Markdown(ends.no_sample if ends.sample is None else "", label="Comparison", elem_id="comparison")
    if ends.sample is not None:
        demo.load(answers(ends.comparison), None, [text], api_name="comparison", concurrency_id="app")


def results_tab(loaded: Loaded, figures: list[tuple[Path, str]]) -> None:
    gr.Markdown(results_markdown(loaded) or "This model's folder has no training.json.")
    # The curves are wide (loss beside accuracy): a row of their own; the others share one.
    wide = [f for f in figures if f[0].name == "curves.png"]
    for row in (wide, [f for f in figures if f not in wide]):
        with gr.Row(equal_height=False):
            for path, title in row:  # each figure has its own title, so no label over it
                gr.Image(
                    str(path), label=title, show_label=False, interactive=False, buttons=["fullscreen"], min_width=380
                )


def augment_tab(ends: Endpoints, seen: gr.Image) -> tuple:
    gr.Markdown(
        "The assignment recipe's training transform (random horizontal flip, then a "
        "random resized crop of 80-100% of the area), shown de-normalized. The served "
        "model's own recipe, in the Model tab, may add a per-image policy, MixUp or "
        "PatchDropout on top of it."
    )
    with gr.Row():
        count = gr.Slider(1, 32, value=8, step=1, label="Augmented versions")
        seed = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed")
    views = gr.Gallery(
        label="Augmented versions", show_label=False, columns=6, height="auto", format="png", elem_id="views"
    )
    return ends.augment, [seen, count, seed], [views], [count, seed], "augment"


def patches_tab(ends: Endpoints, seen: gr.Image) -> tuple:
    default = ends.model.patch_size if ends.model is not None else 4
    patch_size = gr.Radio(ends.patch_sizes, value=default, label=f"Patch size (divides {ends.size})")
    caption = gr.Markdown(label="Patches caption", show_label=False)
    grid = gr.Image(label="Patches", format="png", height=300)
    sequence = gr.Image(label="Token sequence", format="png", height=180)
    return ends.patches, [seen, patch_size], [grid, sequence, caption], [patch_size], "patches"
