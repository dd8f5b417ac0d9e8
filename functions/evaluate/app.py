"""Retraining workflow step: evaluate. A thin handler over chalicelib.lifecycle.pipeline."""

from chalicelib.core.lambda_step import step
from chalicelib.lifecycle import pipeline

handler = step(pipeline.evaluate)
