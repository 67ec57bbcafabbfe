"""The lineage service: JSON API and pages over ``reading``, with access control (``access``).

``create_app(settings)`` builds the FastAPI app; ``otel-lineage serve`` runs it on uvicorn.
Depends on ``reading``, ``delivery`` and ``access``; nothing below imports it.
"""

from otel_lineage.web.app import create_app, create_app_from_env
from otel_lineage.web.settings import WebSettings

__all__ = ["WebSettings", "create_app", "create_app_from_env"]
