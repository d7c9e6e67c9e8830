"""The state behind the routes (`Service`): the job store, the runner, the data folders; taking
a submission (checked by `submit`) to a queued job, and reading jobs and results.

Data directory layout (`--data-dir`, env RS_EDIT_DATA_DIR, default the user's data dir):
    jobs.sqlite3        job records (SQLite, WAL)
    jobs/<id>/          input.tif, mask.tif or roi.geojson, result*.tif once succeeded;
                        an example as reference/<its file name>, its polygons reference_roi.geojson
    cache/models/       trained tile models, reused across prompts (LRU-bounded)
    tmp/                uploads being checked (cleared at start)

What it may hold: with `ServiceConfig.max_data_bytes`, a submission is refused (507
`storage_full`) while the folder's size plus the upload would exceed it (`retention.DataUsage`);
finished jobs go after `retention_days` (`retention.Sweeper`, started by the runner) or when a
client purges them (`purge`, `DELETE /v1/jobs/{id}?purge=true`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from fastapi import UploadFile

from .. import __version__
from . import retention, submit
from .config import ServiceConfig
from .errors import NotFoundError, NotReadyError, QueueFullError, redact_json
from .executor import JobRunner, LocalBackend, RayBackend
from .health import device_info, health
from .jobs import SUCCEEDED, TERMINAL, JobStore, new_job_id
from .worker import EXAMPLE_DIR, EXAMPLE_ROI

log = logging.getLogger("rs_edit.service")


def default_data_dir() -> Path:
    """RS_EDIT_DATA_DIR, else the user's data directory (XDG on Linux)."""
    env = os.environ.get("RS_EDIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rs-edit"


class Service:
    """The state behind the routes: the store, the runner, the folders."""

    def __init__(self, data_dir: Path, config: ServiceConfig, edit_fn=None):
        self.data_dir = data_dir
        self.config = config
        self.jobs_dir = data_dir / "jobs"
        self.tmp_dir = data_dir / "tmp"
        self.cache_dir = data_dir / "cache"
        for folder in (self.jobs_dir, self.tmp_dir, self.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(data_dir / "jobs.sqlite3")
        self.usage = retention.DataUsage(data_dir)  # against `config.max_data_bytes`
        if config.executor == "ray":
            backend = RayBackend(edit_fn, config, config.ray_cache_dir)
        else:
            backend = LocalBackend(edit_fn, config, self.cache_dir)
        self.runner = JobRunner(self.store, backend, self.jobs_dir, config.workers)
        self.device = device_info()
        self.memory_budget_mb = config.memory_budget()
        self.device_type = (
            config.device
            if config.device != "auto"
            else "cuda"
            if self.device["device"].startswith("cuda")
            else "cpu"
        )
        self.started = False

    def start(self) -> None:
        if self.started:
            return
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        interrupted, queued = self.store.recover()
        if interrupted:
            log.warning("%d job(s) interrupted by a restart were marked failed", len(interrupted))
        self._remove_orphans()
        self.runner.start(queued)
        self.started = True
        log.info(
            "rs-edit %s serving %s (%s executor, %d workers, %d jobs re-queued)",
            __version__,
            self.data_dir,
            self.config.executor,
            self.runner.workers,
            len(queued),
        )

    def stop(self) -> None:
        if self.started:
            self.runner.stop()
            self.started = False

    def _remove_orphans(self) -> None:
        """Job folders without a record (a crash between storing the upload and recording it)
        and the work folders of interrupted jobs (partial outputs are never published)."""
        known = self.store.ids()
        for folder in self.jobs_dir.iterdir():
            if folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                shutil.rmtree(folder / "work", ignore_errors=True)

    # --- submission ----------------------------------------------------------------------

    def submit(self, form, mask: UploadFile | None, reference: UploadFile | None = None) -> dict:
        """A checked `submit.job_form` (its `mask` and `reference` as `mask` and `reference`:
        None for an empty part) to a queued job; its JSON."""
        limits = self.config.limits
        self._check_queue()
        options = submit.build_options(form, has_reference=reference is not None)
        if self.config.executor == "local":  # Ray workers may hold weights this machine lacks
            submit.check_clip_weights(options.clip)
        roi = reference_roi = None
        if form.roi is not None:
            roi = submit.parse_roi(form.roi, limits, repair=form.repair_roi)
        if form.reference_roi is not None:
            reference_roi = submit.parse_roi(
                form.reference_roi, limits, repair=form.repair_roi, field="reference_roi"
            )
        # Before anything is stored: the folder's size (walked at most every few seconds) plus
        # this request's uploads within the disk budget, else 507.
        if self.config.max_data_bytes is not None:
            incoming = _upload_bytes(form.image, mask, reference)
            self.usage.check(self.config.max_data_bytes, incoming=incoming)
        job_id = new_job_id()
        staging = self.tmp_dir / job_id
        staging.mkdir()
        try:
            save_upload(form.image, staging / "input.tif")
            mask_path = None
            if mask is not None:
                mask_path = staging / "mask.tif"
                save_upload(mask, mask_path)
            if roi is not None:
                (staging / "roi.geojson").write_text(json.dumps(roi), encoding="utf-8")
            example = save_example(staging, reference, reference_roi)
            summary = submit.validate_inputs(
                staging / "input.tif",
                submit.with_example(options, *example),
                roi=roi,
                mask=mask_path,
                limits=limits,
                memory_budget_mb=self.memory_budget_mb,
                device_type=self.device_type,
            )
            stored = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
            final = self.jobs_dir / job_id
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            inputs = {**summary, "mask": mask_path is not None}
            recorded = options_dict(_by_name(options, *example))
            job = self.store.create(job_id, recorded, inputs, limits.max_queue)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        self.usage.add(stored)  # counted until the next walk sees the files
        self.runner.enqueue(job_id)
        return self.job_json(job)

    def _check_queue(self) -> None:
        """Refuse before storing and validating the upload when the queue is full; `create`
        re-checks atomically."""
        queued = self.store.counts()["queued"]
        if queued >= self.config.limits.max_queue:
            raise QueueFullError(
                f"the job queue is full ({queued} jobs waiting); try again later",
                headers={"Retry-After": "5"},
            )

    # --- removing -----------------------------------------------------------------------------

    def cancel(self, job_id: str):
        """Cancel a queued job at once, a running one at its next step; a finished job is left
        as it is. Returns the job as it is now."""
        job = self.store.require(job_id)
        if job.status not in TERMINAL:
            job = self.store.request_cancel(job_id)
            self.runner.cancel(job_id)
        return job

    def purge(self, job_id: str) -> dict:
        """Remove a finished, failed or cancelled job: record, upload and results
        (`retention.purge_job`; NotFoundError, or JobActiveError, 409, while queued or running)."""
        job = retention.purge_job(self.store, self.jobs_dir, job_id)
        log.info("job %s purged (it was %s)", job.id, job.status)
        return {"id": job.id, "purged": True}

    # --- reading ----------------------------------------------------------------------------

    def job_json(self, job) -> dict:
        position = self.store.queue_position(job) if job.status == "queued" else None
        return redact_json(job.to_json(position))

    def result_path(self, job_id: str, variant: int) -> Path:
        job = self.store.require(job_id)
        if job.status != SUCCEEDED:
            raise NotReadyError(
                f"job {job.id} has no result: it is {job.status}"
                + (f" ({job.message})" if job.message else "")
            )
        if not 1 <= variant <= len(job.outputs):
            raise NotFoundError(f"job {job.id} has {len(job.outputs)} result(s), not {variant}")
        return self.jobs_dir / job.id / job.outputs[variant - 1]

    def health(self) -> dict:
        return health(self)


def _upload_bytes(*uploads: UploadFile | None) -> int:
    """The bytes of the uploads a request carries (None: no upload)."""
    total = 0
    for upload in uploads:
        if upload is None:
            continue
        size = getattr(upload, "size", None)
        if size is None:  # not told by the form parser: the spooled file's length
            upload.file.seek(0, os.SEEK_END)
            size = upload.file.tell()
            upload.file.seek(0)
        total += int(size)
    return total


def save_example(
    folder: Path, reference: UploadFile | None, reference_roi: dict | None
) -> tuple[Path | None, Path | None]:
    """The example image (under its own file name, made safe) and its polygons stored in the
    job's folder (`worker.EXAMPLE_DIR`, `worker.EXAMPLE_ROI`); their paths (None: not sent)."""
    if reference is None:
        return None, None
    path = folder / EXAMPLE_DIR / submit.example_file_name(reference.filename)
    path.parent.mkdir()
    save_upload(reference, path)
    roi_path = None
    if reference_roi is not None:
        roi_path = folder / EXAMPLE_ROI
        roi_path.write_text(json.dumps(reference_roi), encoding="utf-8")
    return path, roi_path


def _by_name(options, reference: Path | None, reference_roi: Path | None):
    """The options as the job records them: its example's files by name, no server path
    (`worker.example_paths` turns them back into paths)."""
    if reference is None:
        return options
    roi_name = None if reference_roi is None else reference_roi.name
    return replace(options, reference=reference.name, reference_roi=roi_name)


def save_upload(upload: UploadFile, dest: Path) -> None:
    """Copy an upload (already bounded by the body limit) to our own file name."""
    upload.file.seek(0)
    with open(dest, "wb") as f:
        shutil.copyfileobj(upload.file, f, 1024 * 1024)


def options_dict(options) -> dict:
    values = asdict(options)
    if values.get("rgb_bands") is not None:
        values["rgb_bands"] = list(values["rgb_bands"])
    return values
