"""The ``llm-dit view`` web viewer: a read-only FastAPI app over a results directory, with a static front end.

``create_app(root)`` builds the app (JSON API, images, diffs, the page); ``serve(root, host, port)`` runs it with
uvicorn until Ctrl-C; ``with running(root) as url:`` serves it in a background thread (notebooks, tests).
Nothing here imports torch or model code.
"""

from llm_dit.viewer.server import DEFAULT_HOST, DEFAULT_PORT, create_app, running, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "create_app", "running", "serve"]
