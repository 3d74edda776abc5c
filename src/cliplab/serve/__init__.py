"""``cliplab serve``: the search service (FastAPI + uvicorn) and its web page."""

from .app import ServeSettings, create_app, run_server

__all__ = ["ServeSettings", "create_app", "run_server"]
