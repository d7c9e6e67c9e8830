"""Small typed helpers around QgsSettings, so keys and defaults live in one place."""

from qgis.core import QgsSettings

BACKEND_URL_KEY = "rs_edit/backend_url"
DEFAULT_BACKEND_URL = "http://127.0.0.1:8765"


def backend_url() -> str:
    """The configured backend base URL (no trailing slash), or the default."""
    value = QgsSettings().value(BACKEND_URL_KEY, DEFAULT_BACKEND_URL, type=str)
    return normalize_url(value) or DEFAULT_BACKEND_URL


def set_backend_url(url: str) -> None:
    """Store the backend base URL; an empty value resets it to the default."""
    url = normalize_url(url)
    if url:
        QgsSettings().setValue(BACKEND_URL_KEY, url)
    else:
        QgsSettings().remove(BACKEND_URL_KEY)


def normalize_url(url: str) -> str:
    """Strip blanks and trailing slashes so that paths can be appended safely."""
    return (url or "").strip().rstrip("/")
