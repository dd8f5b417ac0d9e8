"""Batch scoring, large files: merge the scored parts into the scored file and summary. A thin handler."""

from chalicelib.batch import job as batch_job
from chalicelib.core.lambda_step import step

handler = step(batch_job.merge_step, count_as="BatchFilesScored", service="readmit-batch")
