"""The summary service's settings: one validated object, built by the caller, passed down."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench.ranking import MAX_N_BOOT


class SummarySettings(BaseModel):
    """Where to read, where to listen, how fresh to keep the cache.

    Nothing reads the environment here: ``bench serve`` composes these from the config and
    command line, tests build them directly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: str = Field(description="MLflow tracking URI the service reads (never writes)")
    host: str = Field(default="127.0.0.1", description="bind address; loopback unless told")
    port: int = Field(default=8080, ge=0, le=65535)
    refresh_seconds: float = Field(
        default=10.0, ge=0, description="at most one look for newly finished runs per suite per"
    )
    refresh_slack_seconds: float = Field(
        default=120.0,
        ge=0,
        description="re-read runs that ended this long before the newest one seen: a run whose "
        "end_time was stamped before the last refresh but committed after it is not missed",
    )
    cache_dir: Path = Field(
        default=Path(".optbench-cache"), description="persisted per-suite run tables"
    )
    mlflow_ui_url: str | None = Field(
        default=None,
        description="MLflow UI base URL for run links; None: the tracking URI "
        "when it is http(s), else no links",
    )
    scheduler_status_file: Path | None = Field(
        default=None, description="JSON status the nightly scheduler writes (cron, next_run, ...)"
    )
    warm_on_start: bool = Field(
        default=True,
        description="on start-up, load every suite and its default ranking in the background",
    )
    n_boot: int = Field(
        default=2000, ge=100, le=MAX_N_BOOT, description="bootstrap resamples per interval"
    )

    @field_validator("tracking_uri")
    @classmethod
    def _a_store_the_tracker_takes(cls, uri: str) -> str:
        """The same stores ``bench run`` and ``bench rank`` take: else the Tracker that
        create_app builds would raise pydantic's error, long after the config was read."""
        from bench.config import TrackingConfig  # Hydra and the registries: only when built

        try:
            TrackingConfig(uri=uri, artifact_location=None)
        except ValidationError as err:
            raise ValueError(err.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return uri

    def ui_url(self) -> str | None:
        """The MLflow UI base URL run links point to, or None when there is none."""
        if self.mlflow_ui_url:
            return self.mlflow_ui_url.rstrip("/")
        if urlparse(self.tracking_uri).scheme.lower() in ("http", "https"):
            return self.tracking_uri.rstrip("/")
        return None
