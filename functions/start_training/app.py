"""Retraining workflow step: start training. A thin handler over chalicelib.pipeline."""

from chalicelib import pipeline
from chalicelib.lambda_step import step

handler = step(pipeline.start_training)
