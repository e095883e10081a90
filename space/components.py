"""The page's glue to gradio: the one place where a caller's mistake becomes their message,
and the image input whose payload reaches the endpoints untouched."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr
from gradio.data_classes import ImageData
from gradio_client.utils import is_file_obj_with_meta
from pydantic import ValidationError

from common import photo

_T = TypeVar("_T")  # what an endpoint returns, through answers


def user_error(message: str) -> gr.Error:
    """A message about the caller's input for the page and the API; no traceback in the log."""
    return gr.Error(message, print_exception=False)


def answers(fn: Callable[..., _T]) -> Callable[..., _T]:
    """The one place where a caller's mistake (photo.UserError) becomes their message."""

    @functools.wraps(fn)
    def endpoint(*args):
        try:
            return fn(*args)
        except photo.UserError as err:
            raise user_error(str(err)) from None

    return endpoint


class _ImagePayload(ImageData):
    """gradio's image payload, with a readable answer when a caller sends something else.

    A file must carry gradio's file marker, as FileData requires: only then has gradio
    checked that it was uploaded to this app (a bare {"path": ...} would name any file)."""

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> ImageData:
        message = (
            f"The image must be a file (gradio_client.handle_file(path)) or a base64 data: URL, not {str(obj)[:60]!r}."
        )
        if isinstance(obj, dict) and obj.get("path") is not None and not is_file_obj_with_meta(obj):
            raise user_error(message)
        try:
            return ImageData.model_validate(obj, *args, **kwargs)
        except ValidationError:
            raise user_error(message) from None


def photo_input(**kwargs) -> gr.Image:
    """A gr.Image whose payload reaches the endpoint untouched (the events run with
    preprocess=False), so that common/photo.py does all the decoding, within its limits."""
    component = gr.Image(type="filepath", image_mode=None, format="png", **kwargs)
    component.data_model = _ImagePayload
    return component
