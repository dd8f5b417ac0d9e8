"""Retraining workflow step: check training. A thin handler over chalicelib.pipeline."""

from chalicelib import pipeline
from chalicelib.lambda_step import step

handler = step(pipeline.check_training)
