"""Retraining workflow step: start training. A thin handler over chalicelib.lifecycle.pipeline."""

from chalicelib.core.lambda_step import step
from chalicelib.lifecycle import pipeline

handler = step(pipeline.start_training)
