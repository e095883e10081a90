"""The Gradio app (and Hugging Face Space) for the ViT trained by train.py: the answer
first (top 5 and attention rollout for any photo), then how the model sees it, what the
model is, how it trained and where it fails.

    python app.py                               # http://127.0.0.1:7860, weights from weights/
    python app.py --model USER/REPO             # weights from a Hub model repo
    VIT_CIFAR_MODEL=USER/REPO python app.py     # the same, as a Space variable would set it

Named API endpoints for gradio_client: /view (the image the model reads), /predict,
/classify, /compare, /rollout, /cam, /class_map, /cnn_class_map, /augment, /patches,
/mistakes, /cnn_mistakes, /comparison (docs/APP.md lists them). Photos are read by
common/photo.py, the models are checked by common/model_folder.py, the endpoints live in
space/endpoints.py; this file holds the page.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import gradio as gr
import torch

from cnn_model import CNN
from common import photo
from common.model_folder import FIGURES, ModelError, load_folder, read_training
from rollout import DEFAULT_DISCARD, DEFAULT_FUSION, HEAD_FUSIONS
from space import limits
from space.components import answers, photo_input
from space.endpoints import TOP_CLASS, Endpoints
from space.mistakes import ANY
from space.model_source import Loaded, is_hub_repo_id, source_from
from space.model_source import load_model as load_checked
from space.model_text import header
from space.tabs import augment_tab, comparison_tab, model_tab, own_classes_tab, patches_tab, results_tab

_T = TypeVar("_T")  # what an endpoint returns, through answers and once_shown
HERE = Path(__file__).resolve().parent
BUNDLED_WEIGHTS = HERE / "weights"
EXAMPLES_DIR = HERE / "examples"
MODEL_ENV = "VIT_CIFAR_MODEL"
TOP_K = 5
# Every event shares one concurrency group on a 2-core CPU Space: two requests run at a
# time, each with one torch thread (set in main), so they use both cores without
# oversubscribing them, and at most two photos are being decoded at once. Requests are
# milliseconds each, so 64 waiting drain within seconds; past that a caller is told the
# queue is full at once. api_open=False closes the routes that would skip the queue.
CONCURRENCY_LIMIT = 2
QUEUE_MAX_SIZE = 64
# Gradio keeps each session's last input values in memory, an inline image (up to 26.7 MB
# of base64) among them, for 10,000 sessions by default, and every /gradio_api/call is a
# session of its own. Nothing there is needed by a later request of this app, so it keeps
# only as many sessions as the queue holds requests.
STATE_SESSIONS = CONCURRENCY_LIMIT + QUEUE_MAX_SIZE
# Uploads and pictures are deleted 15 minutes after they were written (checked every 5).
DELETE_CACHE = (300, 900)

# The page's style sheet: crisp small pictures, galleries as tall as their pictures.
CSS_FILE = HERE / "space" / "page.css"


# ---------------------------------------------------------------- the page


def answer_row(size: int) -> tuple:
    """The upload, what the model sees, the ViT's top 5 (with its flip-TTA switch), both
    models' verdict and the CNN's top 5, the ViT's rollout and the CNN's class activation
    map: side by side on a screen, one under the other on a phone, always above the
    examples."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            with gr.Row():
                image = photo_input(
                    label="Your image",
                    sources=["upload", "clipboard"],
                    height=230,
                    elem_id="photo",
                    scale=3,
                    min_width=100,
                )
                seen = photo_input(
                    label=f"Model input, {size}x{size}",
                    interactive=False,
                    height=230,
                    elem_id="seen",
                    scale=2,
                    buttons=[],
                    min_width=100,
                )
        with gr.Column(scale=2, min_width=260):
            label = gr.Label(num_top_classes=TOP_K, label=f"ViT: top {TOP_K} classes", elem_id="label")
            verdict = gr.Markdown(label="Verdict", show_label=False, elem_id="verdict")
            flip = gr.Checkbox(
                False,
                label="Flip TTA: also read the mirror image",
                info="average the answers for the image and its mirror image; the rollout explains the image as shown",
            )
            cnn_label = gr.Label(num_top_classes=TOP_K, label=f"CNN: top {TOP_K} classes", elem_id="cnn-label")
        with gr.Column(scale=4, min_width=300):
            heatmap = gr.Image(label="Attention rollout", format="png", height=300)
            caption = gr.Markdown(label="Rollout caption", show_label=False)
            cam = gr.Image(label="CNN: class activation map", format="png", height=300, elem_id="cam")
            cam_caption = gr.Markdown(label="Class activation map caption", show_label=False)
    return image, seen, label, flip, heatmap, caption, verdict, cnn_label, cam, cam_caption


def rollout_tab(ends: Endpoints, seen: gr.Image, heatmap: gr.Image, caption: gr.Markdown) -> tuple:
    gr.Markdown(
        "Which patches the class token drew from, through all blocks and the "
        "residual paths (Abnar & Zuidema, 2020): the picture at the top."
    )
    with gr.Row():
        fusion = gr.Radio(list(HEAD_FUSIONS), value=DEFAULT_FUSION, label="Head fusion")
        discard = gr.Slider(
            0,
            0.95,
            value=DEFAULT_DISCARD,
            step=0.05,
            label="Discard ratio",
            info="drop this fraction of the weakest patch-to-patch attentions",
        )
        block_head = gr.Dropdown(
            list(HEAD_FUSIONS) + [f"head {h + 1}" for h in range(ends.heads)],
            value="mean",
            label="Block by block: head",
        )
    gr.Markdown("**Raw attention of the class token, block by block** (each scaled to its maximum)")
    depth = len(ends.model.blocks) if ends.model is not None else 6
    blocks = gr.Gallery(
        label="Attention by block",
        show_label=False,
        columns=depth,
        rows=1,
        height="auto",
        format="png",
        elem_id="blocks",
        allow_preview=False,
    )
    controls = [fusion, discard, block_head]
    return ends.rollout, [seen, *controls], [heatmap, blocks, caption], controls, "rollout"


def class_map_tab(ends: Endpoints, seen: gr.Image) -> tuple[tuple, tuple]:
    """The ViT's class-specific map, for its answer or any class the visitor picks, and
    the CNN's class activation map for the same class beside it (when it has that class)."""
    gr.Markdown(
        "Rollout is the same whichever class you ask about. Gradient-weighted rollout "
        "(Chefer, Gur and Wolf, 2021) weights each head's attention by how much it raises "
        "one class's score, so *why cat?* and *why dog?* get different maps."
    )
    names = ends.model.class_names if ends.model is not None else []
    explain = gr.Dropdown([TOP_CLASS, *names], value=TOP_CLASS, label="Explain class")
    with gr.Row(equal_height=False):
        picture = gr.Image(label="Gradient rollout", format="png", height=300, elem_id="class-map")
        caption = gr.Markdown(label="Gradient rollout caption", show_label=False)
    # The CNN answers the same question beside it, where it knows the same classes (its
    # endpoint says why not, otherwise).
    beside = ends.cnn is not None and ends.cnn.class_names == names
    with gr.Row(equal_height=False, visible=beside):
        cnn_picture = gr.Image(
            label="CNN: the class's activation map", format="png", height=300, elem_id="cnn-class-map"
        )
        cnn_caption = gr.Markdown(label="CNN class activation map caption", show_label=False)
    vit = (ends.class_map, [seen, explain], [picture, caption], [explain], "class_map")
    cnn = (ends.cnn_class_map, [seen, explain], [cnn_picture, cnn_caption], [explain], "cnn_class_map")
    return vit, cnn


def mistakes_tab(demo: gr.Blocks, ends: Endpoints) -> None:
    """Filters and the galleries of the ViT's mistakes and (when loaded) the CNN's, one shown
    at a time, filled when the page loads."""
    names = [ANY] + (ends.model.class_names if ends.model is not None else [])
    with gr.Row():
        filters = [
            gr.Dropdown(names, value=ANY, label="True class"),
            gr.Dropdown(names, value=ANY, label="Predicted class"),
        ]
        whose = gr.Radio(["ViT", "CNN"], value="ViT", label="Whose mistakes", visible=ends.cnn is not None)
    models = [("ViT", ends.mistakes_for, "mistakes", "mistakes")]
    if ends.cnn is not None:
        models.append(("CNN", ends.cnn_mistakes_for, "cnn_mistakes", "cnn-mistakes"))
    columns = []
    for model, fn, api_name, elem_id in models:
        with gr.Column(visible=model == "ViT") as column:
            summary = gr.Markdown(
                ends.no_sample if ends.sample is None else "", label=f"{model} mistakes summary", show_label=False
            )
            gallery = gr.Gallery(
                label=f"{model} mistakes",
                show_label=False,
                columns=4,
                height="auto",
                format="png",
                elem_id=elem_id,
                elem_classes=["mistakes"],
                object_fit="contain",
            )
        columns.append(column)
        triggers = [f.change for f in filters] + ([demo.load] if ends.sample is not None else [])
        gr.on(
            triggers,
            answers(fn),
            filters,
            [gallery, summary],
            api_name=api_name,
            concurrency_id="app",
            preprocess=False,
        )
    if len(columns) == 2:

        def shown_for(model: str) -> tuple[gr.Column, gr.Column]:
            return gr.Column(visible=model == "ViT"), gr.Column(visible=model == "CNN")

        whose.change(shown_for, whose, columns, api_visibility="private", concurrency_id="app")


def build_demo(
    loaded: Loaded,
    out: Path | None = None,
    delete_cache: tuple[int, int] = DELETE_CACHE,
    warm: bool = False,
    cnn: CNN | None = None,
    cnn_training: dict | None = None,
) -> gr.Blocks:
    """The page for a loaded ViT (or none: the model's parts then say why), with the CNN
    answering beside it when one is given (`cnn_training`: its training.json); `warm`
    starts finding the model's mistakes at once, in the background (the server does)."""
    out = Path(out or picture_folder())
    ends = Endpoints(loaded, out, cnn, cnn_training)
    if warm:
        ends.find_mistakes_now()
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg"))
    figures = [
        (loaded.folder / f, t)
        for f, t in FIGURES.items()
        if loaded.folder is not None and (loaded.folder / f).is_file()
    ]
    with gr.Blocks(title="ViT on CIFAR-10", delete_cache=delete_cache, analytics_enabled=False) as demo:
        gr.Markdown(f"# A Vision Transformer trained from scratch on CIFAR-10\n{header(loaded)}\n\n{loaded.status}")
        image, seen, label, flip, heatmap, caption, verdict, cnn_label, cam, cam_caption = answer_row(ends.size)
        gr.Examples(
            examples,
            inputs=image,
            examples_per_page=len(examples) or 1,
            label="Examples: CIFAR-10 validation images (the model never trained on them)",
        )
        with gr.Accordion("How your image is read", open=False):
            gr.Markdown(photo.rules(ends.size))
        with gr.Tabs():
            with gr.Tab("Attention rollout", id="rollout"):
                rollout = rollout_tab(ends, seen, heatmap, caption)
            with gr.Tab("Why this class?", id="class_map"):
                class_maps = class_map_tab(ends, seen)
            with gr.Tab("Mistakes", id="mistakes"):
                mistakes_tab(demo, ends)
            with gr.Tab("Your own classes", id="own"):
                own, own_map = own_classes_tab(ends, seen)
            with gr.Tab("ViT vs CNN", id="comparison"):
                comparison_tab(demo, ends)
            with gr.Tab("Results", id="results", visible=bool(figures or loaded.training)):
                results_tab(loaded, figures)
            with gr.Tab("Model", id="model"):
                model_tab(loaded, out)
            with gr.Tab("Augmentation", id="augment"):
                augment = augment_tab(ends, seen)
            with gr.Tab("Patches", id="patches"):
                patches = patches_tab(ends, seen)
            with gr.Tab("As JSON", id="json"):
                gr.Markdown("What the `/classify` endpoint returns for this image: each model's calibrated answer.")
                answers_json = gr.JSON(label="/classify")
        predict = (ends.predict, [seen, flip], [label], [flip], "predict")
        compare = (ends.compare, [seen, flip], [verdict, cnn_label], [flip], "compare")
        classify = (ends.classify, [seen, flip], [answers_json], [flip], "classify")
        cams = (ends.cam, [seen], [cam, cam_caption], [], "cam")
        tabs = [predict, compare, classify, rollout, cams, *class_maps, own, own_map, augment, patches]
        wire(ends, image, seen, tabs)
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_MAX_SIZE, api_open=False)
    return demo


def wire(ends: Endpoints, image: gr.Image, seen: gr.Image, tabs: list[tuple]) -> None:
    """A new image goes to /view (the one step that decodes the upload), and once that
    succeeds its picture (what the model sees) goes to every other endpoint. Each endpoint
    is registered once, named, queued in one concurrency group, and gets its arguments
    unprocessed. A changed control re-answers only its own tab, from the picture already
    shown, through a private copy of that tab's event. (Triggering on `seen.change` instead
    would loop: gradio's Image fires change whenever its value object is replaced, equal or not.)"""
    common = dict(preprocess=False, concurrency_id="app")
    shown = image.change(answers(ends.view), [image], [seen], api_name="view", trigger_mode="always_last", **common)
    for fn, inputs, outs, controls, name in tabs:
        shown.success(answers(fn), inputs, outs, api_name=name, **common)
        if controls:
            gr.on(
                [c.change for c in controls],
                answers(once_shown(fn)),
                inputs,
                outs,
                api_visibility="private",
                trigger_mode="always_last",
                **common,
            )
    outputs = [seen] + [o for tab in tabs for o in tab[2]]

    # Clearing the upload, or an upload that cannot be read, clears every answer, so that
    # no answer stays beside a photo it is not about (and no stale error badge either).
    def no_answers() -> list[None]:
        return [None] * len(outputs)

    for event in (image.clear, shown.failure):
        event(no_answers, None, outputs, api_visibility="private", **common)


def once_shown(fn: Callable[..., _T]) -> Callable[..., _T]:
    """`fn`, answering nothing (and saying nothing) while no image has been shown yet."""

    @functools.wraps(fn)
    def endpoint(seen, *controls):
        if seen is None:
            raise gr.Error(photo.NO_IMAGE, visible=False, print_exception=False)
        return fn(seen, *controls)

    return endpoint


def picture_folder() -> Path:
    """Where the app writes the pictures it shows: beside the uploads, so that the cache
    expires them alike."""
    return Path(gr.utils.get_upload_folder()) / "vit-cifar"


def serve(demo: gr.Blocks, host: str, port: int, block: bool = True) -> tuple[gr.routes.App, str, str | None]:
    """Launch with the app's limits; block=False returns at once (for tests)."""
    uploads = limits.UploadBudget(gr.utils.get_upload_folder(), keep=(picture_folder(),))
    endpoints = {fn.api_name: len(fn.inputs) for fn in demo.fns.values() if fn.api_name}
    return demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=photo.MAX_FILE_BYTES,
        prevent_thread_lock=not block,
        show_error=True,
        quiet=not block,
        css=CSS_FILE.read_text(),
        enable_monitoring=False,
        state_session_capacity=STATE_SESSIONS,
        app_kwargs={"middleware": [limits.request_guard(uploads, endpoints)]},
    )


def load_model(source: str) -> Loaded:
    """The model named by --model / $VIT_CIFAR_MODEL / the bundled folder, checked."""
    return load_checked(source, BUNDLED_WEIGHTS, MODEL_ENV)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=None,
        help=f"Hub repo id or local folder with config.json and model.safetensors "
        f"(default: ${MODEL_ENV}, else the bundled {BUNDLED_WEIGHTS.name}/)",
    )
    parser.add_argument(
        "--cnn",
        default=str(BUNDLED_WEIGHTS / "cnn"),
        help="folder of the CNN that answers beside the ViT (default: the bundled weights/cnn/)",
    )
    # A Space sets GRADIO_SERVER_NAME=0.0.0.0; locally the app stays on this machine.
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to serve on, default $GRADIO_SERVER_NAME or 127.0.0.1 (0.0.0.0 to reach it from other machines)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        help="port to serve on, default $GRADIO_SERVER_PORT or 7860",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per concurrent request; see CONCURRENCY_LIMIT
    source = source_from(args.model, BUNDLED_WEIGHTS, MODEL_ENV)
    loaded = load_model(source)
    if loaded.model is None and args.model and not is_hub_repo_id(args.model):
        # A folder named on the command line must load; a Space's variable or missing
        # bundled weights start the page, which says what to do.
        raise SystemExit(f"error: {loaded.problem}")
    print(loaded.status.replace("`", "").replace("**", ""), flush=True)
    cnn = load_cnn(args.cnn)
    cnn_training = read_training(Path(args.cnn).expanduser()) if cnn else None
    serve(build_demo(loaded, warm=True, cnn=cnn, cnn_training=cnn_training), args.host, args.port)


def load_cnn(folder: str) -> CNN | None:
    """The CNN that answers beside the ViT, or None (said on the console) if it cannot load."""
    try:
        return load_folder(Path(folder).expanduser(), CNN)
    except (OSError, ModelError) as err:
        print(f"No CNN beside the ViT: {err}", flush=True)
        return None


if __name__ == "__main__":
    main()
