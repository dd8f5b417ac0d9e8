"""The batch state machine's events, as pydantic models: an uploaded file (a job), a Distributed Map batch, the
prepare step's result and the merge step's input. The job also names every object a run writes.

Layout in the data bucket: ``incoming/<name>.csv`` → ``work/<run>/items.csv`` (prepared rows) →
``results/<run>/parts/<first line>.csv`` (scored batches) → ``scored/<name>.csv`` and ``scored/<name>.summary.json``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

INCOMING, WORK, RESULTS, SCORED = "incoming/", "work/", "results/", "scored/"
RUN_ID = r"^[A-Za-z0-9_-]{1,80}$"  # Step Functions execution names and EventBridge event ids


class BatchJob(BaseModel):
    """One uploaded file: the state machine's ``Job`` state builds it from the S3 event."""

    model_config = ConfigDict(extra="ignore")

    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=len(INCOMING) + 1, max_length=1024)
    size: int | None = Field(default=None, ge=0)
    run_id: str = Field(pattern=RUN_ID)

    @field_validator("key")
    @classmethod
    def _incoming(cls, key: str) -> str:
        if not key.startswith(INCOMING) or key.endswith("/") or ".." in key.split("/"):
            raise ValueError(f"must name a file under {INCOMING}")
        return key

    @property
    def name(self) -> str:
        name = self.key[len(INCOMING) :]
        return name[: -len(".csv")] if name.lower().endswith(".csv") else name

    @property
    def scored_key(self) -> str:
        return f"{SCORED}{self.name}.csv"

    @property
    def summary_key(self) -> str:
        return f"{SCORED}{self.name}.summary.json"

    @property
    def items_key(self) -> str:
        return f"{WORK}{self.run_id}/items.csv"

    @property
    def parts_prefix(self) -> str:
        return f"{RESULTS}{self.run_id}/parts/"

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> BatchJob:
        """A job, or the S3 "Object Created" event itself (EventBridge), whose id then names the run."""
        if "detail-type" not in event:
            return cls.model_validate(event)
        from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel

        s3 = S3EventNotificationEventBridgeModel.model_validate(event)
        size = s3.detail.object.size
        return cls(
            bucket=s3.detail.bucket.name,
            key=s3.detail.object.key,
            size=None if size is None else int(size),
            run_id=str(event["id"]),
        )


class BatchInput(BaseModel):
    """What every batch of a run shares (the Distributed Map's ItemBatcher.BatchInput)."""

    run_id: str = Field(pattern=RUN_ID)
    bucket: str = Field(min_length=3, max_length=63)
    model_version: str = Field(min_length=1)
    columns: list[str] = Field(min_length=1)


class MapBatch(BaseModel):
    """One Distributed Map batch: rows prepared by ``prepare`` as {"line", "hist", "row"} strings."""

    Items: list[dict[str, str]] = Field(min_length=1, max_length=10_000)
    BatchInput: BatchInput


class Prepared(BaseModel):
    items_key: str
    rows: int = Field(ge=0)
    columns: list[str]
    model_version: str


class MergeInput(BatchJob):
    prepared: Prepared
