"""The embedder Lambda's wiring: Powertools batch processing over the ingest queue, with partial batch failure
reporting. Poison messages are parked in the DLQ with their reason and acknowledged; any other failure marks only
that message as failed, so SQS redelivers it (and, after maxReceiveCount, moves it to the DLQ itself).

No record body or row is ever logged: only message ids, counts and error types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from .ingest import Ingestor, PoisonMessage

SERVICE = "readmit-embedder"


def make_handler(ingestor: Callable[[], Ingestor] = Ingestor.from_env) -> Callable[[dict[str, Any], Any], Any]:
    """The Lambda handler; ``ingestor`` builds the Ingestor once per container, on the first batch."""
    logger = Logger(service=SERVICE)
    metrics = Metrics(namespace="Readmit", service=SERVICE)
    tracer = Tracer(service=SERVICE)
    processor = BatchProcessor(event_type=EventType.SQS)
    built: list[Ingestor] = []

    def record_handler(record: SQSRecord) -> dict[str, int]:
        if not built:
            built.append(ingestor())
        worker = built[0]
        try:
            report = worker.handle(record.body)
        except PoisonMessage as exc:
            worker.dead_letter(record.body, exc.reason, record.message_id)
            context = {"message_id": record.message_id, "reason": exc.reason}
            logger.warning("poison message parked in the DLQ", extra=context)
            metrics.add_metric(name="PoisonMessages", unit=MetricUnit.Count, value=1)
            return {"indexed": 0}
        metrics.add_metric(name="EncountersIndexed", unit=MetricUnit.Count, value=report.indexed)
        if report.invalid:
            metrics.add_metric(name="InvalidRows", unit=MetricUnit.Count, value=report.invalid)
        return {"indexed": report.indexed, "invalid": report.invalid, "chunks_sent": report.chunks_sent}

    @logger.inject_lambda_context(log_event=False)
    @metrics.log_metrics
    @tracer.capture_lambda_handler
    def handler(event: dict[str, Any], context: Any) -> Any:
        return process_partial_response(event, record_handler, processor, context)

    return handler
