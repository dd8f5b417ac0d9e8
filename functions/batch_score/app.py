"""Batch scoring: a Distributed Map batch, or a whole small file. A thin handler over chalicelib.batch_job."""

from chalicelib import batch_job
from chalicelib.lambda_step import step

handler = step(batch_job.score, service="readmit-batch")
