"""``cliplab serve``: the search service (FastAPI + uvicorn) and its web page.

* :mod:`~cliplab.serve.app`: the application, its limits and the server;
* :mod:`~cliplab.serve.routes`: the routers (search, items, encoders, pages);
* :mod:`~cliplab.serve.dependencies`: what routes get injected with (searcher, settings, token check);
* :mod:`~cliplab.serve.thumbnails`: the bounded thumbnail cache.
"""

from .app import create_app, run_server
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "run_server"]
