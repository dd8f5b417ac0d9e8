"""The API independent of Chalice (app.py is its thin adapter): request models, validation errors, authentication,
scoring one or many encounters, the OpenAPI document, the clinician page, the model card as served, the online
history store, the Firehose prediction log, SnapStart hooks and the gunicorn server. Depends on every capability
below it, never on batch, lifecycle or cli."""

__all__ = [
    "api",
    "api_models",
    "auth",
    "card",
    "errors",
    "history_store",
    "openapi",
    "page",
    "prediction_stream",
    "service",
    "similar_models",
    "snapstart",
    "wsgi",
]
