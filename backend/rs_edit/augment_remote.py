"""`rs-edit augment --server URL`: each sample's edit made as a job of `rs-edit serve`.

The client side of the job API (`JobClient`, `remote_edit`) and the pool that keeps up to
`parallel` jobs in flight (`RemoteEdits`) while `rs_edit.augment.run_augment` finishes each sample
(evaluation, PNGs, manifest) in its own thread, one at a time.

`OUTDIR/.jobs.json` records the server job of every sample in flight, so a rerun after an
interruption re-attaches to a job that is still queued, running or done instead of paying for it
twice; a job the server no longer knows, or one that failed or was cancelled, is submitted again.
A server that restarts while jobs are in flight is waited for, and the jobs it interrupted
(`"retryable": true` in their status) are submitted again.
On Ctrl-C (or `CancelledError` from the caller) the jobs in flight are cancelled on the server.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import httpx

from .errors import CancelledError, InputError, ParameterError, RemoteError, RsEditError
from .files import atomic_path, write_text_atomic

JOBS_FILE = ".jobs.json"
FINAL = frozenset({"succeeded", "failed", "cancelled"})
REATTACH = frozenset({"queued", "running", "succeeded"})  # a rerun waits for these, no resubmit
REPORT_KEYS = ("prompts", "clip", "clip_random", "clip_similarity_edits")
MAX_PARALLEL = 64
QUEUE_FULL_WAIT_S = 900.0  # how long a submission keeps retrying while the server's queue is full
RECONNECT_WAIT_S = 120.0  # how long a wait keeps polling a server that went away (a restart)
RESUBMITS = 2  # how often a job that a server restart interrupted is submitted again
_JOB_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class RemoteOptions:
    """Where and how `rs-edit augment` sends its edits."""

    server: str  # the job API's base URL, e.g. http://gpu-box:8765
    token: str | None = None  # sent as `Authorization: Bearer TOKEN`
    parallel: int = 4  # jobs in flight at once
    poll_s: float = 1.0  # seconds between status polls of one job
    timeout_s: float = 120.0  # one HTTP request (uploads and downloads of a chip included)

    def validate(self) -> RemoteOptions:
        url = (self.server or "").strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
            raise ParameterError(
                f"--server must be an http(s) URL like http://host:8765, got {self.server!r}"
            )
        if not 1 <= self.parallel <= MAX_PARALLEL:
            raise ParameterError(
                f"--parallel must be between 1 and {MAX_PARALLEL}, got {self.parallel}"
            )
        if not self.poll_s > 0 or not self.timeout_s > 0:
            raise ParameterError("the poll interval and the request timeout must be positive")
        return RemoteOptions(url, self.token or None, self.parallel, self.poll_s, self.timeout_s)


@dataclass(frozen=True)
class EditRequest:
    """One sample's edit as a job: the pre chip, its mask, an example image to look like (sent
    as the job's `reference`) and the edit's options."""

    image: Path
    mask: Path
    prompt: str
    preset: str
    clip: str
    seed: int
    rgb_bands: tuple[int, ...] | None = None
    reference: Path | None = None
    reference_weight: float | None = None  # with `reference`; None: the server's default

    def form(self) -> dict[str, str]:
        fields = {
            "prompt": self.prompt,
            "preset": self.preset,
            "clip": self.clip,
            "seed": str(self.seed),
            "variants": "1",
        }
        if self.rgb_bands:
            fields["rgb_bands"] = ",".join(str(b) for b in self.rgb_bands)
        if self.reference is not None and self.reference_weight is not None:
            fields["reference_weight"] = repr(float(self.reference_weight))
        return fields

    def matches(self, options: dict) -> bool:
        """Whether a server job's options are this request's (a job to re-attach to)."""
        bands = options.get("rgb_bands")
        return (
            options.get("prompt") == " ".join(self.prompt.split())
            and options.get("preset") == self.preset
            and options.get("clip") == self.clip
            and options.get("seed") == self.seed
            and (tuple(bands) if bands else None) == (tuple(self.rgb_bands or ()) or None)
            and bool(options.get("reference")) == (self.reference is not None)
            and (
                self.reference is None
                or self.reference_weight is None
                or options.get("reference_weight") == self.reference_weight
            )
        )


# ------------------------------------------------------------------------------------- client


class JobClient:
    """The job API of one server. `stop`, once set, ends any wait with CancelledError."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 120.0,
        stop: threading.Event | None = None,
    ):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.stop = stop or threading.Event()
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- requests ---------------------------------------------------------------------------

    def health(self) -> dict:
        return self._json(self._request("GET", "/v1/health"), "the health check")

    def submit(self, request: EditRequest) -> str:
        """A new job for `request`; waits (Retry-After) while the server's queue is full."""
        deadline = time.monotonic() + QUEUE_FULL_WAIT_S
        while True:
            with contextlib.ExitStack() as opened:
                files = {
                    field: (path.name, opened.enter_context(open(path, "rb")), "image/tiff")
                    for field, path in _uploads(request)
                }
                r = self._request("POST", "/v1/jobs", data=request.form(), files=files)
            if r.status_code == 429 and time.monotonic() < deadline:
                self._sleep(_retry_after(r))
                continue
            return self._json(r, f"the job for {request.image.name}")["id"]

    def job(self, job_id: str) -> dict | None:
        """The job's status body, or None when the server does not know it (404)."""
        if not _JOB_ID.fullmatch(job_id or ""):
            return None  # never put a malformed id (from an edited .jobs.json) into a URL
        r = self._request("GET", f"/v1/jobs/{job_id}")
        if r.status_code == 404:
            return None
        return self._json(r, f"the status of job {job_id}")

    def wait(self, job_id: str, poll_s: float = 1.0) -> dict:
        """Poll until the job is succeeded, failed or cancelled. A server that cannot be
        reached is polled on for RECONNECT_WAIT_S: it may be restarting."""
        down_since = None
        while True:
            try:
                job = self.job(job_id)
            except UnreachableError:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > RECONNECT_WAIT_S:
                    raise
                self._sleep(max(poll_s, 0.5))
                continue
            down_since = None
            if job is None:
                raise RemoteError(f"job {job_id} vanished from the rs-edit server at {self.url}")
            if job["status"] in FINAL:
                return job
            self._sleep(poll_s)

    def download(self, job_id: str, target: Path) -> None:
        """The job's result into a temporary file next to `target`, renamed into place."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with (
            atomic_path(target, suffix=target.suffix) as tmp,
            open(tmp, "wb") as out,
            self._errors(),
            self._http.stream("GET", f"/v1/jobs/{job_id}/result") as r,
        ):
            if r.status_code >= 400:
                r.read()
                self._json(r, f"the result of job {job_id}")
            for chunk in r.iter_bytes(1024 * 1024):
                out.write(chunk)

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a job (a finished one is left as it is); its body, or None if unknown."""
        if not _JOB_ID.fullmatch(job_id or ""):
            return None
        r = self._request("DELETE", f"/v1/jobs/{job_id}")
        if r.status_code == 404:
            return None
        return self._json(r, f"cancelling job {job_id}")

    # --- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self):
        """Transport failures as one line naming the server."""
        try:
            yield
        except httpx.ConnectError as exc:
            raise UnreachableError(
                f"cannot reach the rs-edit server at {self.url} ({_reason(exc)}): is "
                "`rs-edit serve` running there?"
            ) from None
        except httpx.TransportError as exc:
            # A connection dropped without an answer is a server going down: worth waiting for.
            dropped = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError)
            raise (UnreachableError if dropped else RemoteError)(
                f"the rs-edit server at {self.url} did not answer properly "
                f"({type(exc).__name__}: {_reason(exc)})"
            ) from None

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        with self._errors():
            return self._http.request(method, path, **kw)

    def _json(self, r: httpx.Response, what: str) -> dict:
        """The response's JSON body, or the server's error as one of our errors."""
        if r.status_code < 400:
            try:
                return r.json()
            except ValueError:
                raise RemoteError(
                    f"the rs-edit server at {self.url} sent no JSON for {what}"
                ) from None
        message = _server_message(r)
        if r.status_code == 401:
            raise ParameterError(
                f"the rs-edit server at {self.url} wants a valid token (--token or "
                f"RS_EDIT_TOKEN): {message}"
            )
        if r.status_code in (400, 413, 422):  # the request itself: bad input, as locally
            raise InputError(f"the rs-edit server at {self.url} refused {what}: {message}")
        raise RemoteError(
            f"the rs-edit server at {self.url} failed {what} (HTTP {r.status_code}): {message}"
        )

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise CancelledError("stopped")


def _uploads(request: EditRequest) -> list[tuple[str, Path]]:
    """The request's files by form field: the chip, its mask and the example, if any."""
    uploads = [("image", request.image), ("mask", request.mask)]
    if request.reference is not None:
        uploads.append(("reference", Path(request.reference)))
    return uploads


class UnreachableError(RemoteError):
    """No answer from the server at all: it is down, restarting, or dropped the connection."""


def _server_message(r: httpx.Response) -> str:
    """The message of the server's `{"error": {"code", "message"}}` body, else its text."""
    try:
        error = r.json()["error"]
        return f"{error['message']} ({error['code']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {' '.join(r.text.split())[:300]}"


def _retry_after(r: httpx.Response) -> float:
    try:
        return min(max(float(r.headers.get("Retry-After", 5)), 0.5), 30.0)
    except ValueError:
        return 5.0


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def remote_edit(
    client: JobClient,
    request: EditRequest,
    post: Path,
    *,
    job_id: str | None = None,
    on_submit=None,
    poll_s: float = 1.0,
    log=lambda line: None,
) -> dict:
    """The edit of `request` made by the server into `post`; returns the job's report.

    With `job_id`, waits for that job instead of submitting; `on_submit(job_id)` is called as
    soon as a new job exists (to record it before waiting). A job that a server restart
    interrupted (`retryable`) is submitted again, up to RESUBMITS times; `log` says so.
    """
    where = f"the rs-edit server at {client.url}"
    for attempt in range(RESUBMITS + 1):
        if job_id is None:
            job_id = client.submit(request)
            if on_submit is not None:
                on_submit(job_id)
        job = client.wait(job_id, poll_s)
        if not (job["status"] == "failed" and job.get("retryable")) or attempt == RESUBMITS:
            break
        log(
            f"{post.stem}: job {job_id} was interrupted on {where} ({job.get('message')}), "
            "submitting again"
        )
        job_id = None
    if job["status"] == "failed":
        raise RemoteError(f"job {job_id} for {post.stem} failed on {where}: {job.get('message')}")
    if job["status"] == "cancelled":
        raise RemoteError(f"job {job_id} for {post.stem} was cancelled on {where}")
    report = job.get("report") or {}
    check_report(report, f"job {job_id} on {where}")
    client.download(job_id, post)
    return report


def check_report(report: dict, what: str) -> None:
    """A job's report must come from rs-edit's editor (a stand-in's report has the same keys,
    with nothing in them): the manifest records its prompts and CLIP similarities."""
    missing = [k for k in REPORT_KEYS if report.get(k) in (None, "", [])]  # False is an answer
    editor = report.get("editor", "rs-edit")
    if missing or editor != "rs-edit":
        why = f"{', '.join(missing)} empty or missing" if missing else f"editor {editor!r}"
        raise RemoteError(
            f"{what} has no edit report from rs-edit's editor ({why}): the server does not "
            "run rs-edit's editor (a stand-in server edits nothing)"
        )


# ------------------------------------------------------------------------------------- ledger


class JobLedger:
    """OUTDIR/.jobs.json: {sample: {"server": URL, "job": id}} for the jobs in flight.

    Written atomically on every change (threads share it), removed once empty.
    """

    def __init__(self, path: Path, log=lambda line: None):
        self.path = path
        self._lock = threading.Lock()
        self._jobs = self._load(log)

    def _load(self, log) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            jobs = json.loads(self.path.read_text(encoding="utf-8"))["jobs"]
            return {
                str(name): {"server": str(e["server"]), "job": str(e["job"])}
                for name, e in jobs.items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log(f"{self.path.name} is unreadable: its jobs are submitted again")
            return {}

    def get(self, name: str) -> dict | None:
        with self._lock:
            return self._jobs.get(name)

    def put(self, name: str, server: str, job_id: str) -> None:
        with self._lock:
            self._jobs[name] = {"server": server, "job": job_id}
            self._save()

    def drop(self, *names: str) -> None:
        with self._lock:
            removed = [self._jobs.pop(n, None) for n in names]
            if any(removed):
                self._save()

    def _save(self) -> None:
        if not self._jobs:
            self.path.unlink(missing_ok=True)
            return
        text = json.dumps({"jobs": self._jobs}, indent=1, sort_keys=True) + "\n"
        write_text_atomic(self.path, text)


# --------------------------------------------------------------------------------------- pool


class RemoteEdits:
    """Makes the post GeoTIFF of each sample as a server job, `parallel` at a time.

    Use as a context manager around `results`; the samples' other files are the caller's.
    """

    def __init__(self, remote: RemoteOptions, options, outdir: Path, done, log=lambda line: None):
        self.remote = remote.validate()
        self.url = self.remote.server
        self.options = options  # AugmentOptions: preset, clip, rgb_bands, reference_weight
        self.log = log
        self.ledger = JobLedger(Path(outdir) / JOBS_FILE, log)
        self.ledger.drop(*done)  # records of samples an earlier run finished
        self.stop = threading.Event()
        self.flying: dict[Future, object] = {}  # future -> Sample, in submission order
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> RemoteEdits:
        with self._client() as client:
            client.health()  # unreachable server or bad token: fail before any file is written
        self.log(f"editing on {self.url}, {self.remote.parallel} jobs at a time")
        self.pool = ThreadPoolExecutor(self.remote.parallel, thread_name_prefix="rs-edit-augment")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Stop the threads; when the run was cancelled, cancel its jobs on the server too."""
        self.stop.set()
        names = [sample.name for sample in self.flying.values()]
        cancelling = exc_type is not None and issubclass(
            exc_type, (KeyboardInterrupt, CancelledError)
        )
        if cancelling:
            self._cancel(names)  # at once, so the server stops working for nobody
        self.pool.shutdown(wait=True, cancel_futures=True)
        if cancelling:
            self._cancel(names)  # again: a job a thread submitted while we were cancelling

    def results(self, samples):
        """(sample, report) for each sample, as their jobs finish; the post file exists."""
        samples = iter(samples)
        self._fill(samples)
        while self.flying:
            done, _ = wait(self.flying, return_when=FIRST_COMPLETED)
            future = next(f for f in self.flying if f in done)  # the earliest submitted first
            report = future.result()
            sample = self.flying.pop(future)
            self._fill(samples)  # keep the server busy while the caller finishes this sample
            yield sample, report

    def finished(self, sample) -> None:
        """The caller recorded the sample: its job is no longer needed for a resume."""
        self.ledger.drop(sample.name)

    # --- inside ---------------------------------------------------------------------------

    def _fill(self, samples) -> None:
        while len(self.flying) < self.remote.parallel:
            sample = next(samples, None)
            if sample is None:
                return
            self.flying[self.pool.submit(self._edit, sample)] = sample

    def _client(self, timeout_s: float | None = None) -> JobClient:
        return JobClient(
            self.url,
            self.remote.token,
            timeout_s=timeout_s or self.remote.timeout_s,
            stop=self.stop,
        )

    def _request(self, sample) -> EditRequest:
        return EditRequest(
            image=sample.pre,
            mask=sample.mask_path,
            prompt=sample.prompt,
            preset=self.options.preset,
            clip=self.options.clip,
            seed=sample.seed,
            rgb_bands=self.options.rgb_bands,
            reference=None if sample.reference is None else Path(sample.reference),
            reference_weight=self.options.reference_weight if sample.reference else None,
        )

    def _edit(self, sample) -> dict:
        """In a pool thread: one sample's job, from submission (or re-attaching) to download."""
        if self.stop.is_set():
            raise CancelledError("stopped")  # the run is ending: submit nothing more
        request = self._request(sample)
        with self._client() as client:
            return remote_edit(
                client,
                request,
                sample.post,
                job_id=self._reattach(client, sample.name, request),
                on_submit=lambda job_id: self.ledger.put(sample.name, self.url, job_id),
                poll_s=self.remote.poll_s,
                log=self.log,
            )

    def _reattach(self, client: JobClient, name: str, request: EditRequest) -> str | None:
        """The recorded job of this sample, if the server still has it queued, running or done."""
        entry = self.ledger.get(name)
        if entry is None or entry["server"] != self.url:
            return None
        job = client.job(entry["job"])
        if job is None:
            self.log(f"{name}: job {entry['job']} is unknown to the server, submitting again")
            return None
        if job.get("status") not in REATTACH or not request.matches(job.get("options") or {}):
            self.log(f"{name}: job {job['id']} is {job.get('status')}, submitting again")
            return None
        self.log(f"{name}: re-attached to job {job['id']} ({job['status']})")
        return job["id"]

    def _cancel(self, names: list[str]) -> None:
        """Cancel these samples' jobs; forget them unless they already succeeded (a rerun then
        downloads the result). A job that cannot be cancelled now stays recorded."""
        with JobClient(self.url, self.remote.token, timeout_s=10.0) as client:
            for name in names:
                entry = self.ledger.get(name)
                if entry is None or entry["server"] != self.url:
                    continue
                try:
                    job = client.cancel(entry["job"])
                except RsEditError as exc:
                    self.log(f"{name}: could not cancel job {entry['job']}: {exc}")
                    continue
                if job is None or job.get("status") != "succeeded":
                    self.ledger.drop(name)


__all__ = [
    "EditRequest",
    "JobClient",
    "JobLedger",
    "RemoteEdits",
    "RemoteOptions",
    "remote_edit",
]
