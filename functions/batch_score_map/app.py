"""Batch scoring of one Distributed Map batch, as its own function with a 45 s timeout so that its retries fit the
EXPRESS child execution's 5 minutes (the whole-file path stays in functions/batch_score)."""

from chalicelib.batch import job as batch_job
from chalicelib.core.lambda_step import step

handler = step(batch_job.score_map_batch, service="readmit-batch")
