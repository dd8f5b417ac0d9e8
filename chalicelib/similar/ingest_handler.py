"""The embedder Lambda's wiring: Powertools batch processing over the ingest queue, with partial batch failure
reporting. A poison message is logged with its reason and reported as a failed item, like any other failure: SQS
makes it visible again and, after the queue's maxReceiveCount, moves it to the DLQ itself. The function never
writes to the DLQ, so it holds only messages SQS moved there, and a redrive sends back only source events.
https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html (partial batch responses)

No record body or row is ever logged: only message ids, counts, reasons without values and error types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel

from chalicelib.similar.ingest import Ingestor, PoisonMessage

SERVICE = "readmit-embedder"


def make_handler(ingestor: Callable[[], Ingestor] = Ingestor.from_env) -> Callable[[dict[str, Any], Any], Any]:
    """The Lambda handler; ``ingestor`` builds the Ingestor once per container, on the first batch."""
    logger = Logger(service=SERVICE)
    metrics = Metrics(namespace="Readmit", service=SERVICE)
    tracer = Tracer(service=SERVICE)
    # A batch of nothing but failures is answered with every item listed, not an exception: Lambda retries the
    # listed items either way, and poison-only batches do not count as function errors.
    # Each record is parsed with Powertools' SqsRecordModel; one that does not parse fails alone, like a poison one.
    processor = BatchProcessor(event_type=EventType.SQS, model=SqsRecordModel, raise_on_entire_batch_failure=False)
    built: list[Ingestor] = []

    def record_handler(record: SqsRecordModel) -> dict[str, int]:
        if not built:
            built.append(ingestor())
        worker = built[0]
        try:
            report = worker.handle(str(record.body))
        except PoisonMessage as exc:
            receives = int(record.attributes.ApproximateReceiveCount)  # a string in the SQS record
            context: dict[str, Any] = {"message_id": record.messageId, "reason": exc.reason, "receive_count": receives}
            logger.warning("poison message: failed, for SQS to move to the DLQ after maxReceiveCount", extra=context)
            metrics.add_metric(name="PoisonMessages", unit=MetricUnit.Count, value=1)
            raise
        metrics.add_metric(name="EncountersIndexed", unit=MetricUnit.Count, value=report.indexed)
        if report.invalid:
            metrics.add_metric(name="InvalidRows", unit=MetricUnit.Count, value=report.invalid)
            context = {"message_id": record.messageId, "reports": len(report.reports)}
            logger.info("invalid rows reported", extra=context)
        return {"indexed": report.indexed, "invalid": report.invalid, "chunks_sent": report.chunks_sent}

    @logger.inject_lambda_context(log_event=False)
    @metrics.log_metrics
    @tracer.capture_lambda_handler
    def handler(event: dict[str, Any], context: Any) -> Any:
        return process_partial_response(event, record_handler, processor, context)

    return handler
