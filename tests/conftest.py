"""Shared fixtures: the app served from this process, with the bundled weights."""

import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url():
    """URL of the app (bundled weights/) running in a background thread of this process."""
    import app

    model, status = app.load_model(str(app.BUNDLED_WEIGHTS))
    assert model is not None, f"the app tests need trained weights in weights/: {status}"
    demo = app.build_demo(model, status)
    port = free_port()
    app.serve(demo, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
