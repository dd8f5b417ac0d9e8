"""Nightly batch scoring on AWS: what the batch state machine's functions do (their handlers only delegate here).

A CSV lands under ``s3://<data bucket>/incoming/``; S3 tells EventBridge, which starts
``statemachines/batch_score.asl.json``. A small file is scored by one call of ``score`` (``score_file``). A large
one is prepared once (``prepare``: validity, in-file patient history and line numbers need the whole file, and the
champion's version is pinned so every batch uses the same model), fanned out by a Distributed Map over the
prepared rows in batches (``score`` with ``{"Items", "BatchInput"}``: ``score_batch``), and merged (``merge``).
Both paths run the same code on the same items, so a file gets the same scores whichever way it goes.

Layout in the data bucket: ``incoming/<name>.csv`` → ``work/<run>/items.csv`` (prepared rows) →
``results/<run>/parts/<first line>.csv`` (scored batches, each sorted) → ``scored/<name>.csv`` and
``scored/<name>.summary.json``, written with SSE-KMS. Bad rows never stop a run; a bad file (no header, missing
columns) or a failed batch does, and the state machine reports it.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from chalicelib.batch.errors import (  # the errors the steps raise, by the names the state machine catches
    IncompleteRun,
    ModelVersionMismatch,
    NoChampionToScore,
    SourceMissing,
)
from chalicelib.batch.errors import (
    InvalidEvent as InvalidEvent,  # re-exported: callers read batch_job.InvalidEvent
)
from chalicelib.batch.events import RESULTS, BatchJob, MapBatch, MergeInput
from chalicelib.batch.output import OUTPUT_COLUMNS, STATUSES, Summary, from_csv, merge, score_rows, to_csv
from chalicelib.batch.rows import Item, RowValidator, from_items, write_items
from chalicelib.batch.rows import prepare as prepare_items
from chalicelib.core import settings as app_settings
from chalicelib.core.audit import PredictionLog, open_prediction_log
from chalicelib.core.aws_clients import LazyClient
from chalicelib.core.errors import validated
from chalicelib.core.telemetry import logger
from chalicelib.model.bundle import ModelBundle
from chalicelib.registry.loader import load_model
from chalicelib.registry.registry import Registry

ENV_CAPACITY_PERCENT = app_settings.ENV_BATCH_CAPACITY_PCT  # the care team's capacity: the top q% of a list
ENV_KMS_KEY = app_settings.ENV_BATCH_KMS_KEY  # the KMS key scored files are written with (else the bucket's default)
BATCH_ROWS = 1000  # = ItemBatcher.MaxItemsPerBatch in the state machine
DEFAULT_CAPACITY_PERCENT: float = app_settings.default("batch_capacity_pct")
_FETCH_THREADS = 16


# ---- settings and models ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchSettings:
    """Where the model comes from, the capacity band and the KMS key; from the environment by default."""

    registry_uri: str
    model_uri: str | None = None  # a fixed bundle instead of the registry's champion
    capacity_percent: float = DEFAULT_CAPACITY_PERCENT
    kms_key_id: str | None = None
    batch_rows: int = BATCH_ROWS

    @classmethod
    def from_env(cls) -> BatchSettings:
        s = app_settings.Settings.from_env()
        return cls(
            registry_uri=app_settings.registry_uri(s.registry),
            model_uri=s.model,
            capacity_percent=s.batch_capacity_pct,
            kms_key_id=s.batch_kms_key,
        )


class ModelCache:
    """Bundles by version, loaded once per container: a run's batches all ask for the version prepare pinned."""

    def __init__(self, settings: BatchSettings, s3_client: Any = None) -> None:
        self.settings, self.s3_client = settings, s3_client
        self._models: dict[str, ModelBundle] = {}
        self._lock = threading.Lock()

    def champion_version(self) -> str:
        if self.settings.model_uri:
            return self.get(None).version
        version = Registry.open(self.settings.registry_uri, s3_client=self.s3_client).get_alias("champion")
        if not version:
            raise NoChampionToScore(f"the registry at {self.settings.registry_uri} has no champion")
        return version

    def get(self, version: str | None) -> ModelBundle:
        with self._lock:
            if self.settings.model_uri:
                fixed = self._models.get("") or load_model(self.settings.model_uri, s3_client=self.s3_client)
                self._models[""] = fixed
                if version and version != fixed.version:
                    raise ModelVersionMismatch(f"asked for {version}, this function serves {fixed.version}")
                return fixed
        version = version or self.champion_version()
        with self._lock:
            if version not in self._models:
                uri = f"{self.settings.registry_uri.rstrip('/')}/models/{version}"
                model = load_model(uri, s3_client=self.s3_client)
                if model.version != version:
                    raise ModelVersionMismatch(f"registry version {version} holds bundle {model.version}")
                self._models[version] = model
            return self._models[version]


# ---- the jobs ---------------------------------------------------------------------------------------------------
def _chunks(items: Sequence[Item], size: int) -> Iterable[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BatchJobs:
    """The four steps over one S3 client, prediction log and model cache (tests hand in moto's client)."""

    def __init__(
        self,
        settings: BatchSettings,
        s3_client: Any = None,
        log: PredictionLog | None = None,
        models: ModelCache | None = None,
    ) -> None:
        self.settings = settings
        self._s3 = s3_client
        self._log = log
        self.models = models or ModelCache(settings, s3_client)

    s3 = LazyClient("s3")

    @property
    def log(self) -> PredictionLog:
        if self._log is None:
            self._log = open_prediction_log(s3_client=self.s3)
        return self._log

    # -- S3 --------------------------------------------------------------------------------------------------------
    def _source_key(self, job: BatchJob) -> str:
        """The object's key: S3 notifications may URL-encode it ("a b.csv" as "a+b.csv"); try both."""
        from botocore.exceptions import ClientError

        for key in dict.fromkeys((job.key, unquote_plus(job.key))):
            try:
                self.s3.head_object(Bucket=job.bucket, Key=key)
                return key
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
        raise SourceMissing(f"no object s3://{job.bucket}/{job.key}")

    def _encrypted(self, content_type: str) -> dict[str, str]:
        extra = {"ServerSideEncryption": "aws:kms", "ContentType": content_type}
        if self.settings.kms_key_id:
            extra["SSEKMSKeyId"] = self.settings.kms_key_id
        return extra

    # -- steps -----------------------------------------------------------------------------------------------------
    def prepare(self, job: BatchJob) -> dict[str, Any]:
        """The large-file path's first step: validate, add in-file history and line numbers, pin the model."""
        started = time.perf_counter()
        version = self.models.champion_version()
        with tempfile.TemporaryDirectory() as tmp:
            source, items_file = Path(tmp) / "source.csv", Path(tmp) / "items.csv"
            self.s3.download_file(job.bucket, self._source_key(job), str(source))
            columns, items = prepare_items(lambda: source.open(newline="", encoding="utf-8-sig"))
            with items_file.open("w", newline="", encoding="utf-8") as fh:
                rows = write_items(items, fh)
            self.s3.upload_file(str(items_file), job.bucket, job.items_key, ExtraArgs={"ContentType": "text/csv"})
        logger.info("batch prepared", extra={"run_id": job.run_id, "rows": rows, "seconds": _since(started)})
        return {"items_key": job.items_key, "rows": rows, "columns": columns, "model_version": version}

    def score_batch(self, batch: MapBatch) -> dict[str, Any]:
        """One Distributed Map batch: score it, log it, write it as a sorted part; returns counts."""
        started = time.perf_counter()
        info = batch.BatchInput
        model = self.models.get(info.model_version)
        first_line = min(int(item["line"]) for item in batch.Items)
        part = self._score(model, RowValidator(info.columns), batch.Items, f"batch-{info.run_id}-{first_line}")
        key = f"{RESULTS}{info.run_id}/parts/{first_line:010d}.csv"
        self.s3.put_object(Bucket=info.bucket, Key=key, Body=to_csv(part), ContentType="text/csv")
        counts = _counts(part)
        logger.info("batch scored", extra={"run_id": info.run_id, **counts, "seconds": _since(started)})
        return {"part": key, **counts}

    def score_file(self, job: BatchJob) -> dict[str, Any]:
        """The small-file path: the same prepare and scoring, in one call, then the same merge."""
        started = time.perf_counter()
        text = self.s3.get_object(Bucket=job.bucket, Key=self._source_key(job))["Body"].read().decode("utf-8-sig")
        columns, items_iter = prepare_items(lambda: io.StringIO(text, newline=""))
        items = list(items_iter)
        model = self.models.get(self.models.champion_version())
        validator = RowValidator(columns)
        parts = [
            self._score(model, validator, chunk, f"batch-{job.run_id}-{chunk[0]['line']}")
            for chunk in _chunks(items, self.settings.batch_rows)
        ]
        notice = self._finish(job, parts, expected_rows=len(items), model_version=model.version)
        logger.info("file scored", extra={"run_id": job.run_id, "rows": len(items), "seconds": _since(started)})
        return notice

    def merge(self, run: MergeInput) -> dict[str, Any]:
        """The large-file path's last step: every part, merged in order, into the scored file and its summary."""
        started = time.perf_counter()
        keys = [
            obj["Key"]
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=run.bucket, Prefix=run.parts_prefix)
            for obj in page.get("Contents", [])
        ]
        with ThreadPoolExecutor(_FETCH_THREADS) as pool:
            parts = list(
                pool.map(lambda k: from_csv(self.s3.get_object(Bucket=run.bucket, Key=k)["Body"].read()), keys)
            )
        notice = self._finish(run, parts, expected_rows=run.prepared.rows, model_version=run.prepared.model_version)
        logger.info("batch merged", extra={"run_id": run.run_id, "parts": len(keys), "seconds": _since(started)})
        return notice

    # -- shared ----------------------------------------------------------------------------------------------------
    def _score(self, model: ModelBundle, validator: RowValidator, items: Sequence[Item], request_id: str) -> list:
        rows = from_items(validator, items)
        scored = score_rows(model, rows, validator.columns.index("encounter_id"), request_id=request_id)
        self.log.append(scored.audit)
        return scored.sorted_rows()

    def _finish(
        self, job: BatchJob, parts: Sequence[Iterable[Sequence[str]]], *, expected_rows: int, model_version: str
    ) -> dict[str, Any]:
        summary = Summary(self.settings.capacity_percent)
        with tempfile.TemporaryFile("w+", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(OUTPUT_COLUMNS)
            for row in merge(parts):
                summary.add(row)
                writer.writerow(row)
            fh.flush()
            counts = summary.to_dict()
            if counts["rows"] != expected_rows:
                raise IncompleteRun(f"{counts['rows']} rows scored, {expected_rows} prepared")
            assert isinstance(fh.buffer, io.BufferedRandom)  # what TemporaryFile("w+") wraps: seekable bytes
            fh.buffer.seek(0)
            self.s3.upload_fileobj(fh.buffer, job.bucket, job.scored_key, ExtraArgs=self._encrypted("text/csv"))
        finished = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        files = {
            "scored_file": f"s3://{job.bucket}/{job.scored_key}",
            "summary_file": f"s3://{job.bucket}/{job.summary_key}",
        }
        body = {"source": f"s3://{job.bucket}/{job.key}", **files, "run_id": job.run_id, "finished_at": finished}
        body |= {"model_version": model_version, **counts}
        self.s3.put_object(
            Bucket=job.bucket,
            Key=job.summary_key,
            Body=json.dumps(body, indent=2).encode(),
            **self._encrypted("application/json"),
        )
        # The notice goes to SNS: counts and locations only, never rows or reasons (they may quote values).
        notice_keys = ("rows", *STATUSES, "tiers", "capacity_band")
        return {**files, "run_id": job.run_id, "model_version": model_version, **{k: counts[k] for k in notice_keys}}


def _counts(rows: Iterable[Sequence[str]]) -> dict[str, int]:
    status = OUTPUT_COLUMNS.index("status")
    counts = dict.fromkeys(("rows", *STATUSES), 0)
    for row in rows:
        counts["rows"] += 1
        counts[row[status]] += 1
    return counts


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


# ---- handler entry points: one BatchJobs per container, so a model is loaded once ------------------------------
_jobs: BatchJobs | None = None


def default_jobs() -> BatchJobs:
    global _jobs
    if _jobs is None:
        _jobs = BatchJobs(BatchSettings.from_env())
    return _jobs


def score(event: dict[str, Any], jobs: BatchJobs | None = None) -> dict[str, Any]:
    """BatchScoreFunction: a Distributed Map batch ({"Items", "BatchInput"}) or a whole small file (a job, or the
    S3 Object Created event itself)."""
    jobs = jobs or default_jobs()
    if "Items" in event:
        return jobs.score_batch(validated(lambda: MapBatch.model_validate(event)))
    return jobs.score_file(validated(lambda: BatchJob.from_event(event)))


def score_map_batch(event: dict[str, Any], jobs: BatchJobs | None = None) -> dict[str, Any]:
    """BatchScoreMapFunction: one Distributed Map batch only ({"Items", "BatchInput"}), so that function never
    holds the whole-file path (or its permissions)."""
    return (jobs or default_jobs()).score_batch(validated(lambda: MapBatch.model_validate(event)))


def prepare_step(event: dict[str, Any], jobs: BatchJobs | None = None) -> dict[str, Any]:
    """BatchPrepareFunction: the large-file path's first step."""
    return (jobs or default_jobs()).prepare(validated(lambda: BatchJob.from_event(event)))


def merge_step(event: dict[str, Any], jobs: BatchJobs | None = None) -> dict[str, Any]:
    """BatchMergeFunction: the large-file path's last step."""
    return (jobs or default_jobs()).merge(validated(lambda: MergeInput.model_validate(event)))
