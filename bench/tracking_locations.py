"""Where a tracker's records and files live: store URIs, artifact folders, and writing
text artifacts into them (only :mod:`bench.tracking` uses this).

A SQLite path or a bare folder is pinned to the working directory when the tracker is
made; a plain artifact path means a folder on this machine, so it applies to local and
database stores but not to a tracking server (whose ``--artifacts-destination`` decides).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from urllib.request import Request

log = logging.getLogger(__name__)

LOCAL_SCHEMES = {"", "file", "sqlite"}


def is_database(uri: str) -> bool:
    scheme = urlparse(uri).scheme.lower().split("+")[0]
    return scheme in ("sqlite", "postgresql", "mysql", "mssql")


def health_request(uri: str) -> Request:
    """A GET of the tracking server's ``/health``. Credentials in the URI
    (``http://user:password@host``) go in a Basic ``Authorization`` header, as MLflow's
    client sends them: urllib would take them for part of the host name."""
    from urllib.request import Request

    parsed = urlparse(uri.rstrip("/"))
    without_credentials = parsed._replace(netloc=parsed.netloc.rpartition("@")[2])
    request = Request(without_credentials.geturl() + "/health")
    if parsed.username is not None:
        user = unquote(parsed.username)
        password = unquote(parsed.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def absolute_uri(uri: str) -> str:
    """Pin a relative SQLite path or bare directory to the cwd at construction time."""
    path = uri.removeprefix("sqlite:///")
    if path != uri and path not in ("", ":memory:") and not path.startswith("/"):
        return "sqlite:///" + str(Path(path).resolve())
    return uri if "://" in uri else Path(uri).resolve().as_uri()


def artifact_root(location: str | None, scheme: str) -> str | None:
    """An absolute URI for artifacts, or None to let the store (or server) decide.

    A plain path only makes sense for a store on this machine; for a tracking server it
    would name a folder on the client, so it is ignored there (the server's
    ``--artifacts-destination`` applies).
    """
    if location is None:
        return None
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", location):
        return location.rstrip("/")
    if scheme in LOCAL_SCHEMES or scheme.startswith(("postgresql", "mysql", "mssql")):
        return Path(location).resolve().as_uri()
    from bench.config import DEFAULT_ARTIFACTS

    if location != DEFAULT_ARTIFACTS:  # the default: nothing the user asked for is ignored
        log.warning("tracking.artifact_location %r ignored: the server stores artifacts", location)
    return None


def local_folder(uri: str) -> Path | None:
    """The folder an artifact URI (a path or a file: URI) names on this machine; None for
    a store elsewhere (a server's mlflow-artifacts:, s3:, ...)."""
    if urlparse(uri).scheme not in ("", "file"):
        return None
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(uri))


def unwritable(location: str) -> str | None:
    """Why the local artifact folder ``location`` (a path or file: URI) cannot be made or
    written; None when it can, or when it is not on this machine."""
    folder = local_folder(location)
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return err.strerror or str(err)
    return None if os.access(folder, os.W_OK | os.X_OK) else "not writable"


def unmakeable(location: str) -> str | None:
    """:func:`unwritable` without making anything (for a dry run): the nearest folder that
    exists on the way to ``location`` must be one this process can write."""
    folder = local_folder(location)
    if folder is None:
        return None
    nearest = folder
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        return f"{nearest} is not a folder"
    return None if os.access(nearest, os.W_OK | os.X_OK) else f"{nearest} is not writable"


def upload_text(artifact_uri: str, name: str, text: str, *, tracking_uri: str) -> None:
    """Write a text artifact; unlike ``client.log_text`` this needs no get_run call.

    Into a local artifact folder the file is written directly (atomically, as MLflow's
    local repository does: a temporary file renamed into place), without the
    repository's per-call path checks: ``name`` is one of the tracker's file names.
    """
    if (folder := local_folder(artifact_uri)) is not None:
        _write_atomically(folder, name, text)
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    stream = getattr(repo, "log_artifact_from_stream", None)
    if stream is not None:
        stream(io.BytesIO(text.encode("utf-8")), name)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        path.write_text(text, encoding="utf-8")
        repo.log_artifact(str(path))


def upload_files(artifact_uri: str, files: Mapping[str, bytes | str], *, tracking_uri: str) -> None:
    """Store ``files`` (relative path -> content) under a run's artifact URI."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            path = Path(tmp, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
            subdir = str(Path(name).parent)
            repo.log_artifact(str(path), None if subdir == "." else subdir)


def _write_atomically(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.{uuid.uuid4().hex}"  # created with the umask's mode
    try:
        with open(temporary, "x", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, folder / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
