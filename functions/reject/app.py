"""Retraining workflow step: reject. A thin handler over chalicelib.pipeline."""

from chalicelib import pipeline
from chalicelib.lambda_step import step

handler = step(pipeline.reject, count_as="ModelsRejected")
