"""Batch scoring: a Distributed Map batch, or a whole small file. A thin handler over chalicelib.batch.job."""

from chalicelib.batch import job as batch_job
from chalicelib.core.lambda_step import step

handler = step(batch_job.score, service="readmit-batch")
