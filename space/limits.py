"""Serving limits for app.py that Gradio does not set itself: a bound on request bodies,
no images fetched from web addresses, output files written whole, and memory handed back after a large decode."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import io
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.middleware import Middleware

from common.atomic_files import atomic_write

# A 2 MB image inline as base64 (photo.MAX_INLINE_BYTES) is 2.7 MB of JSON; nothing else
# the app takes is big.
MAX_BODY_BYTES = 3_000_000
# The one route with its own limit: Gradio's upload (gradio.route_utils.API_PREFIX +
# "/upload") streams to disk under max_file_size. Exactly that path: any other route whose
# name ends in /upload (a /call/upload, say) is read into memory like the rest.
UPLOAD_ROUTE = "/gradio_api/upload"
CALL_ROUTE = "/gradio_api/call/"


# Uploads live until the cache deletes them (app.DELETE_CACHE), so what they may occupy is
# bounded twice: each client's bytes over the last minute (ten photos at the 20 MB limit),
# and the upload folder's total.
UPLOAD_BYTES_PER_MINUTE = 200_000_000
UPLOAD_FOLDER_BYTES = 2_000_000_000
EMPTY_FOLDER_AGE = 60.0
BUSY = "The server holds too many uploads right now; try again in a few minutes."


class UploadBudget:
    """What uploads may still add: per client over the last `window` seconds, and to the
    folder (its size measured at most every `rescan` seconds, when empty folders that
    the cache left behind are removed too)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        per_client: int = UPLOAD_BYTES_PER_MINUTE,
        in_folder: int = UPLOAD_FOLDER_BYTES,
        keep: tuple[str | os.PathLike, ...] = (),
        window: float = 60.0,
        rescan: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.folder, self.keep = Path(folder), {Path(k).resolve() for k in keep}
        self.per_client, self.in_folder, self.window, self.rescan = per_client, in_folder, window, rescan
        self.clock, self.sent, self.stored, self.scanned = clock, {}, 0, -float("inf")

    def refusal(self, client: str, size: int) -> str | None:
        """None, counting `size` against the budgets, or why the upload is refused."""
        now = self.clock()
        if now - self.scanned >= self.rescan:
            self.stored, self.scanned = self.sweep(), now
            # Forget visitors whose last upload is over a minute old: the map stays small.
            self.sent = {c: sent for c, sent in self.sent.items() if sent and now - sent[-1][0] < self.window}
        recent = [(t, n) for t, n in self.sent.get(client, []) if now - t < self.window]
        if sum(n for _, n in recent) + size > self.per_client:
            self.sent[client] = recent
            return (
                f"Uploads are limited to {self.per_client // 1_000_000} MB a minute per "
                "visitor; wait a minute and upload again."
            )
        if self.stored + size > self.in_folder:
            return BUSY
        self.sent[client], self.stored = [*recent, (now, size)], self.stored + size
        return None

    def sweep(self) -> int:
        """The folder's size in bytes, after removing the empty folders in it."""
        total = 0
        for root, dirs, files in os.walk(self.folder, topdown=False):
            for name in files:
                with contextlib.suppress(OSError):  # deleted meanwhile
                    total += os.stat(os.path.join(root, name)).st_size
            here = Path(root)
            if not dirs and not files and here != self.folder and here.resolve() not in self.keep:
                with contextlib.suppress(OSError):  # refilled or removed meanwhile
                    # A folder younger than a minute may be an upload's, about to be filled.
                    if time.time() - here.stat().st_mtime > EMPTY_FOLDER_AGE:
                        here.rmdir()
        return total


class RequestGuard:
    """ASGI middleware that reads a request's body before the application does: 413 for
    a body over MAX_BODY_BYTES (Gradio's uploads excepted), 400 for an image given by an
    http(s) address, which Gradio would download, with no size limit, before any
    check of the app's ran; uploads are held to an UploadBudget."""

    def __init__(
        self,
        app,
        limit: int = MAX_BODY_BYTES,
        uploads: UploadBudget | None = None,
        endpoints: dict[str, int] | None = None,
    ):
        # endpoints: each named endpoint's number of inputs (Gradio's own answer to a call
        # with too few prints its component objects, memory addresses and all)
        self.app, self.limit, self.uploads, self.endpoints = app, limit, uploads, endpoints or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = _route(scope)
        if route == UPLOAD_ROUTE:
            return await self._upload(scope, receive, send)
        called = route.removeprefix(CALL_ROUTE).split("/")[0] if route.startswith(CALL_ROUTE) else None
        if self.endpoints and called is not None and called not in self.endpoints:
            # Gradio answers an unknown name with a 500 and a traceback in the log.
            return await self._refuse(
                send,
                404,
                f"No endpoint named {called[:80]!r}: this app's "
                f"are {', '.join('/' + e for e in sorted(self.endpoints))}.",
            )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        chunks, total, more = [], 0, True
        while more:  # the body, counted as it arrives (chunked bodies declare no length)
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            total += len(message.get("body", b""))
            if total > self.limit:
                return await self._refuse(send)
            chunks.append(message)
            more = message.get("more_body", False)
        problem = self._body_problem(called, b"".join(m.get("body", b"") for m in chunks))
        if problem:
            return await self._refuse(send, 400, problem)
        return await self.app(scope, _replay(chunks, receive), send)

    def _body_problem(self, called: str | None, body: bytes) -> str | None:
        """Why a JSON body is refused: an image by web address, or a call with too few inputs."""
        if called is None and b"http" not in body.lower() and b"\\u" not in body:
            return None  # no address can hide in it: skip parsing
        try:
            payload = json.loads(body)
        except ValueError:  # not JSON: Gradio refuses it itself
            return None
        if names_a_web_address(payload):
            return WEB_ADDRESS
        values = payload.get("data") if isinstance(payload, dict) else None
        needed = self.endpoints.get(called or "", 0)
        if isinstance(values, list) and len(values) < needed:
            return (
                f"/{called} takes {needed} inputs and got {len(values)}: send all of them, "
                f'{{"data": [...]}} (gradio_client fills in the defaults itself).'
            )
        return None

    async def _upload(self, scope, receive, send):
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if self.uploads is not None:
            if not declared.isdigit():
                return await self._refuse(send, 411, "An upload must declare its size (Content-Length).")
            refusal = self.uploads.refusal(_client(scope), int(declared))
            if refusal:
                return await self._refuse(send, 507 if refusal == BUSY else 429, refusal)
        return await self.app(scope, receive, send)

    async def _refuse(self, send, status: int = 413, text: str = "") -> None:
        body = (text or f"Request body over {self.limit // 1_000_000} MB: send images as file uploads.").encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


WEB_ADDRESS = (
    "Images are not fetched from web addresses: download the image and upload "
    "the file (gradio_client.handle_file(path)) or send it as a base64 data: URL."
)


def names_a_web_address(payload: object) -> bool:
    """Whether a parsed JSON body holds a file whose path is an http(s) address (parsed, so
    however the JSON spelled it: escaped slashes and \\u escapes included)."""
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            if isinstance(path, str) and path.lstrip().lower().startswith(("http://", "https://")):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _route(scope) -> str:
    """The request's path below the app's mount point (a proxy may mount it under one)."""
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root) :] if root and path.startswith(root) else path).rstrip("/")


def _client(scope) -> str:
    """Who sent a request: behind a proxy (a Space's) the address it saw, the last of
    X-Forwarded-For; otherwise the connection's own."""
    forwarded = dict(scope["headers"]).get(b"x-forwarded-for")
    if forwarded:
        return forwarded.decode("latin-1").split(",")[-1].strip()
    return (scope.get("client") or ("unknown",))[0]


def _replay(messages, then=None):
    """A receive() that gives back the messages already read, then the live ones."""
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


class LastCall:
    """Each session's last call of one endpoint, shared for a few seconds.

    Gradio's Image can fire its change event twice for one upload when it already held an
    image (it compares value objects, not values): a call identical to the session's last
    one, still running or started within `seconds`, gets that call's outcome instead of
    decoding the photo again, and the caller learns it is a repeat (so a failure is not
    shown twice)."""

    def __init__(self, seconds: float = 5.0, sessions: int = 512):
        self.seconds, self.sessions = seconds, sessions
        self._calls: OrderedDict[str, tuple[str, float, Future]] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, session: str | None, key: str, compute: Callable[[], object]) -> tuple[Future, bool]:
        """(the outcome as a finished Future, whether this call computed it)."""
        now = time.monotonic()
        with self._lock:
            last = self._calls.get(session) if session else None
            if last and last[0] == key and now - last[1] < self.seconds:
                future, fresh = last[2], False
            else:
                future, fresh = Future(), True
                if session:
                    self._calls[session] = (key, now, future)
                    self._calls.move_to_end(session)
                    while len(self._calls) > self.sessions:
                        self._calls.popitem(last=False)
        if fresh:
            try:
                future.set_result(compute())
            except Exception as err:  # handed to every caller of the same step
                future.set_exception(err)
        future.exception()  # wait for the first caller's outcome
        return future, fresh


def save_png(pixels: np.ndarray, folder: str | os.PathLike) -> str:
    """Write an (H, W, 3) uint8 image as <folder>/<content hash>.png and return the path.
    The file is written under a temporary name and renamed into place, so a request
    reading the same picture for another caller never sees it half-written (Gradio's own
    numpy-to-file step rewrites a shared file in place). All pictures share one folder:
    the cache deletes expired files, never the folders they were in."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=3)
    data = buffer.getvalue()
    target = Path(folder) / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    atomic_write(target, lambda file: file.write(data))  # also renews its age for delete_cache
    return str(target)


def renew(path: str | os.PathLike) -> bool:
    """Restart a picture's time in the cache (delete_cache ages files by ctime), so that
    it can be served again; False when it has been deleted already."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc keeps it per thread arena
    otherwise, so a burst of large decodes would stay resident); a no-op elsewhere."""
    if (trim := _malloc_trim()) is not None:
        trim(0)


def request_guard(
    uploads: UploadBudget | None = None, endpoints: dict[str, int] | None = None, limit: int = MAX_BODY_BYTES
) -> Middleware:
    """RequestGuard as a FastAPI middleware entry (launch's app_kwargs)."""
    return Middleware(RequestGuard, limit=limit, uploads=uploads, endpoints=endpoints)
