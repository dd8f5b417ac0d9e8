"""Batch scoring, large files: validate, add in-file history, pin the model. A thin handler over batch_job."""

from chalicelib.batch import job as batch_job
from chalicelib.core.lambda_step import step

handler = step(batch_job.prepare_step, service="readmit-batch")
