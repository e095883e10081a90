"""What a caller sent to an endpoint, checked: which photo an image argument names (and
which file or bytes to read for it), and the numbers and choices of the controls. Each bad
value is a photo.UserError that names it."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import BinaryIO

import gradio as gr

from common import photo


def photo_source(payload: str | os.PathLike | dict | None) -> str | os.PathLike | BinaryIO | None:
    """What load_photo reads for an input: a file path (from Python), a file uploaded to
    this app (from a request), or the bytes of a data: URL."""
    if payload is None or isinstance(payload, (str, os.PathLike)):
        return payload
    if isinstance(payload, dict) and str(payload.get("url") or "").startswith("data:"):
        return photo.read_data_url(payload["url"])
    path = payload.get("path") if isinstance(payload, dict) else None
    # gradio has checked the upload already; this keeps any other file out regardless.
    if path and Path(path).resolve().is_relative_to(Path(gr.utils.get_upload_folder()).resolve()):
        return path
    raise photo.UserError("The image must be a file uploaded to this app or a base64 data: URL.")


def payload_key(payload: str | os.PathLike | dict | None) -> str:
    """Which image a payload is: its file path (uploads are named by content), or a
    hash of an inline data: URL."""
    if isinstance(payload, dict) and str(payload.get("url") or "").startswith("data:"):
        return hashlib.sha256(payload["url"].encode()).hexdigest()
    if isinstance(payload, dict):
        return str(payload.get("path"))
    return str(payload)


def whole_number(value, name: str, low: int, high: int) -> int:
    """A whole number from low to high, however the caller sent it (gradio may send 3.0)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
        or not low <= value <= high
    ):
        raise photo.UserError(f"{name} must be a whole number from {low} to {high}, not {value!r}.")
    return int(value)


def one_of(value, name: str, choices) -> str:
    """One of the choices, as sent."""
    if value not in list(choices):
        raise photo.UserError(f"{name} must be one of {', '.join(map(str, choices))}, not {value!r}.")
    return value
