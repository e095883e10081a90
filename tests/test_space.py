"""space.py's serving limits, driven directly (the app's own routes are test_app_api's)."""

import asyncio
import os
import time

import space.limits


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_each_visitor_may_upload_so_much_a_minute(tmp_path):
    clock = Clock()
    budget = space.limits.UploadBudget(tmp_path, per_client=100, in_folder=10_000, clock=clock)
    assert budget.refusal("a", 60) is None and budget.refusal("a", 40) is None
    assert "limited to 0 MB a minute per visitor" in budget.refusal("a", 1)
    assert budget.refusal("b", 100) is None  # another visitor has a budget of its own
    clock.now += 61
    assert budget.refusal("a", 100) is None  # a minute later, the budget is back
    assert set(budget.sent) == {"a"}  # b, silent for a minute, is forgotten
    assert "a minute per visitor" in budget.refusal("c", 101)  # refused outright: nothing counted
    clock.now += 5
    assert budget.refusal("c", 100) is None


def test_uploads_stop_while_the_folder_is_full_and_resume_when_the_cache_empties_it(tmp_path):
    clock = Clock()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "photo.jpg").write_bytes(b"x" * 900)
    budget = space.limits.UploadBudget(tmp_path, per_client=10_000, in_folder=1000, rescan=5, clock=clock)
    assert budget.refusal("a", 100) is None  # 900 + 100 fit
    assert budget.refusal("b", 1) == space.limits.BUSY  # counted before the files even land
    (tmp_path / "old" / "photo.jpg").unlink()  # the cache expires it
    clock.now += 5
    assert budget.refusal("b", 500) is None


def test_the_sweep_removes_the_empty_folders_expired_uploads_leave_but_not_new_or_kept_ones(tmp_path):
    for name in ("expired1", "expired2/inner", "fresh", "pictures", "full"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "full" / "a.jpg").write_bytes(b"abc")
    old = time.time() - 2 * space.limits.EMPTY_FOLDER_AGE
    for name in ("expired1", "expired2/inner", "expired2", "pictures", "full"):
        os.utime(tmp_path / name, (old, old))
    budget = space.limits.UploadBudget(tmp_path, keep=(tmp_path / "pictures",))
    assert budget.sweep() == 3
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["expired2", "fresh", "full", "pictures"]  # expired2 emptied only now
    assert budget.sweep() == 3 and tmp_path.exists()


def call_guard(guard, path, headers):
    """(status, body, whether the app behind the guard was reached) for one request."""
    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "path": path,
        "root_path": "",
        "client": ("10.0.0.1", 5000),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(space.limits.RequestGuard(app, uploads=guard)(scope, receive, send))
    return sent[0]["status"], sent[1]["body"].decode(), bool(reached)


def test_the_guard_holds_uploads_to_the_budget_by_the_visitor_the_proxy_saw(tmp_path):
    budget = space.limits.UploadBudget(tmp_path, per_client=1000)
    route = space.limits.UPLOAD_ROUTE
    assert call_guard(budget, route, {"content-length": "600"}) == (200, "ok", True)
    status, text, reached = call_guard(budget, route, {"content-length": "600"})
    assert (status, reached) == (429, False) and "a minute per visitor" in text
    # Behind a proxy each visitor is the address the proxy saw, the last one it appended.
    forwarded = {"content-length": "600", "x-forwarded-for": "1.2.3.4, 5.6.7.8"}
    assert call_guard(budget, route, forwarded)[0] == 200
    assert call_guard(budget, route, {**forwarded, "x-forwarded-for": "9.9.9.9, 5.6.7.8"})[0] == 429
    status, text, reached = call_guard(budget, route, {})
    assert (status, reached) == (411, False) and "Content-Length" in text
    assert call_guard(budget, "/gradio_api/info", {})[2]  # other routes pass as before
