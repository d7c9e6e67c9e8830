"""Typed helpers around QgsSettings (keys and defaults live here) and the access token.

Ordinary options go to QgsSettings. The access token never does: it is the password of a
"Basic" configuration in QGIS's authentication manager (encrypted with the user's master
password); QgsSettings only holds that configuration's id. The plugin sets the
`Authorization: Bearer` header itself, as QgsAuthManager has no method for API headers.
"""

from pathlib import Path

from qgis.core import QgsApplication, QgsAuthMethodConfig, QgsProject, QgsSettings

PREFIX = "rs_edit/"
BACKEND_URL_KEY = PREFIX + "backend_url"
DEFAULT_BACKEND_URL = "http://127.0.0.1:8765"

AUTHCFG_KEY = PREFIX + "authcfg"  # id of the auth manager config holding the token, not the token
AUTHCFG_NAME = "RS Edit backend token"

RESULTS_DIR_KEY = PREFIX + "results_dir"  # empty: next to the project
PROJECT_RESULTS_SUBDIR = "rs_edit_results"
UNSAVED_PROJECT_RESULTS_DIR = Path.home() / "rs-edit-results"

# "auto": the backend picks the best preset for its device (fast on a CPU, balanced on a GPU).
PRESETS = ("auto", "tiny", "fast", "balanced", "quality")
DEFAULT_PRESET = "auto"
RANDOM_CLIP = "tiny-random"  # open_clip's tiny test model with random weights
CLIP_MODELS = ("RemoteCLIP-ViT-B-32", "RemoteCLIP-RN50", "RemoteCLIP-ViT-L-14", RANDOM_CLIP)
DEFAULT_CLIP = "RemoteCLIP-ViT-B-32"
LLM_OPTIONS = ("none", "openai")
# An example image's weight against the prompt: 0 = the prompt alone, 1 = the example alone.
DEFAULT_EXAMPLE_WEIGHT = 0.8

# The largest tile sent to the backend, in pixels (the backend's own window limit is
# 8192 x 8192; a smaller value set here refuses earlier). The health answer may lower it.
MAX_TILE_PIXELS_KEY = PREFIX + "max_tile_pixels"
DEFAULT_MAX_TILE_PIXELS = 8192 * 8192

# Ordinary options remembered between sessions: key -> (default, type).
OPTIONS = {
    "preset": (DEFAULT_PRESET, str),
    "clip": (DEFAULT_CLIP, str),
    "llm": ("none", str),
    "variants": (1, int),
    "seed": (-1, int),  # -1: random
    "area_source": ("extent", str),
    "roi_source": ("drawn", str),
    "add_results": (True, bool),
    "full_scene": (False, bool),  # also write the pre/post/mask set on the whole scene
    "example_weight": (DEFAULT_EXAMPLE_WEIGHT, float),
    "poll_interval_s": (1.0, float),
}

# The plugin-managed backend (local_backend.py); empty values mean "under the QGIS profile".
LOCAL_EXECUTABLE_KEY = PREFIX + "local_backend_executable"  # empty: the managed env's rs-edit
LOCAL_DATA_DIR_KEY = PREFIX + "local_backend_data_dir"
LOCAL_ENV_DIR_KEY = PREFIX + "local_backend_env_dir"
LOCAL_PYTHON_KEY = PREFIX + "local_backend_python"  # the Python that creates the environment

ALL_KEYS = [
    BACKEND_URL_KEY,
    AUTHCFG_KEY,
    RESULTS_DIR_KEY,
    MAX_TILE_PIXELS_KEY,
    LOCAL_EXECUTABLE_KEY,
    LOCAL_DATA_DIR_KEY,
    LOCAL_ENV_DIR_KEY,
    LOCAL_PYTHON_KEY,
] + [PREFIX + name for name in OPTIONS]

# The running plugin-managed backend: its URL and token live in memory only (a fresh token
# each start), never in the settings or the authentication manager.
_local_backend = dict.fromkeys(("url", "token"), "")


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


def use_local_backend(url: str, token: str) -> None:
    """Point the plugin at the managed backend: its URL becomes the backend URL, and token()
    answers its token while that URL is the one configured."""
    _local_backend.update(url=normalize_url(url), token=token)
    set_backend_url(url)


def forget_local_backend(url: str = "") -> None:
    """The managed backend stopped (only when `url` is its URL, if given)."""
    if not url or normalize_url(url) == _local_backend["url"]:
        _local_backend.update(dict.fromkeys(_local_backend, ""))


def local_backend_url() -> str:
    """The URL of the managed backend while it runs, else ''."""
    return _local_backend["url"]


def normalize_url(url: str) -> str:
    """Strip blanks and trailing slashes so that paths can be appended safely."""
    return (url or "").strip().rstrip("/")


def option(name: str):
    default, kind = OPTIONS[name]
    return QgsSettings().value(PREFIX + name, default, type=kind)


def set_option(name: str, value) -> None:
    _default, kind = OPTIONS[name]
    QgsSettings().setValue(PREFIX + name, kind(value))


def max_tile_pixels() -> int:
    value = QgsSettings().value(MAX_TILE_PIXELS_KEY, DEFAULT_MAX_TILE_PIXELS, type=int)
    return value if value > 0 else DEFAULT_MAX_TILE_PIXELS


def results_dir(project: QgsProject | None = None) -> Path:
    """Where results are saved: the folder from the settings, else `rs_edit_results/` next to
    the project file, else ~/rs-edit-results for an unsaved project. Never a temporary folder."""
    chosen = chosen_results_dir()
    if chosen:
        return Path(chosen).expanduser()
    project = project or QgsProject.instance()
    home = project.absolutePath() if project.fileName() else ""
    if home:
        return Path(home) / PROJECT_RESULTS_SUBDIR
    return UNSAVED_PROJECT_RESULTS_DIR


def chosen_results_dir() -> str:
    """The folder chosen in the settings, or '' (results go next to the project)."""
    return QgsSettings().value(RESULTS_DIR_KEY, "", type=str).strip()


def set_results_dir(path: str) -> None:
    if (path or "").strip():
        QgsSettings().setValue(RESULTS_DIR_KEY, str(path).strip())
    else:
        QgsSettings().remove(RESULTS_DIR_KEY)


# --- access token: QGIS authentication manager only --------------------------------------


class TokenError(Exception):
    """The token could not be stored or read (e.g. the master password was not given)."""


def _auth_manager():
    manager = QgsApplication.authManager()
    if manager.isDisabled():
        raise TokenError("QGIS's authentication manager is disabled: " + manager.disabledMessage())
    return manager


def store_token(token: str) -> str:
    """Store `token` in the authentication manager and remember the config id; an empty token
    removes it. Returns the config id ('' when removed). QGIS asks for the master password
    when needed."""
    token = (token or "").strip()
    if not token:
        clear_token()
        return ""
    manager = _auth_manager()
    config = QgsAuthMethodConfig("Basic")
    existing = QgsSettings().value(AUTHCFG_KEY, "", type=str)
    if existing and existing in manager.configIds():
        manager.loadAuthenticationConfig(existing, config, True)
    config.setName(AUTHCFG_NAME)
    config.setMethod("Basic")
    config.setConfig("username", "token")
    config.setConfig("password", token)
    if config.id():
        ok = manager.updateAuthenticationConfig(config)
        config_id = config.id()
    else:
        # QGIS 3.22 returns (ok, config) here, with the new id on the returned config.
        answer = manager.storeAuthenticationConfig(config)
        ok, stored = answer if isinstance(answer, tuple) else (answer, config)
        config_id = stored.id() if ok else ""
    if not ok or not config_id:
        raise TokenError(
            "could not store the token in QGIS's authentication manager "
            "(was the master password entered?)"
        )
    QgsSettings().setValue(AUTHCFG_KEY, config_id)
    return config_id


def token() -> str:
    """The token for the configured backend: the managed backend's while it is the one
    configured, else the stored token, or '' when none is configured."""
    local = _local_backend
    if local["url"] and local["token"] and backend_url() == local["url"]:
        return local["token"]
    config_id = QgsSettings().value(AUTHCFG_KEY, "", type=str)
    if not config_id:
        return ""
    manager = QgsApplication.authManager()
    if manager.isDisabled() or config_id not in manager.configIds():
        return ""
    config = QgsAuthMethodConfig()
    answer = manager.loadAuthenticationConfig(config_id, config, True)
    ok = answer[0] if isinstance(answer, tuple) else answer
    return config.config("password", "") if ok else ""


def has_token() -> bool:
    return bool(QgsSettings().value(AUTHCFG_KEY, "", type=str))


def clear_token() -> None:
    config_id = QgsSettings().value(AUTHCFG_KEY, "", type=str)
    if config_id:
        manager = QgsApplication.authManager()
        if not manager.isDisabled() and config_id in manager.configIds():
            manager.removeAuthenticationConfig(config_id)
    QgsSettings().remove(AUTHCFG_KEY)
