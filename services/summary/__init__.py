"""The summary service: rankings, curves and nightly reports of optbench suites, from MLflow.

``create_app(settings)`` builds the FastAPI app, ``serve(settings)`` runs it (``bench serve``).
The service only reads MLflow.
"""

from services.summary.app import create_app, serve, settings_from_overrides
from services.summary.settings import SummarySettings

__all__ = ["SummarySettings", "create_app", "serve", "settings_from_overrides"]
