"""``cliplab serve``: the search service (FastAPI + uvicorn) and its web page.

* :mod:`~cliplab.serve.app`: the application, its limits and the server;
* :mod:`~cliplab.serve.routes`: the routers (search, items, encoders, pages);
* :mod:`~cliplab.serve.dependencies`: what routes get injected with (searcher, settings, token check);
* :mod:`~cliplab.serve.thumbnails`: the bounded thumbnail cache.
"""

from ..extras import require

for _module in ("fastapi", "uvicorn", "python_multipart", "swagger_ui_bundle", "cachetools"):
    require(_module, "serve", "cliplab serve")

from .app import create_app, run_server  # noqa: E402 - after the check that names the extra to install
from .settings import ServeSettings  # noqa: E402

__all__ = ["ServeSettings", "create_app", "run_server"]
