"""The errors a Step Functions step raises, named so that its state machine can tell a retry from a failure.

Lambda reports an unhandled exception as ``{"errorType": <the exception class's name>, "errorMessage": ...}``
(https://docs.aws.amazon.com/lambda/latest/dg/python-exceptions.html), and Step Functions matches a Retrier's or
Catcher's ``ErrorEquals`` against that name, case-sensitively, with no notion of subclasses
(https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html, "Error names"). So the
definitions in statemachines/ name leaf classes, and the two bases below say which list a leaf belongs in:

- ``PermanentError``: the same input fails again (a bad event, a model that fails validation, a decision that makes
  the step meaningless): caught by name, never retried;
- ``TransientError``: a retry may succeed (AWS throttled the call, or was briefly unavailable after boto3's own
  retries): retried by name, in the same Retrier as Lambda's service errors so the retry budget stays one Retrier's.

``step_error`` turns the library exceptions a step cannot help seeing (pydantic's ValidationError on its event,
botocore's throttling and 5xx) into these; the Lambda step wrapper (``lambda_step.step``) applies it. Messages name
fields, never values: they reach the execution history and the failure notice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

T = TypeVar("T")


class StepError(Exception):
    """A step's failure that its state machine handles by name."""


class PermanentError(StepError):
    """Retrying with the same input cannot help: the state machine catches it by name and fails fast."""


class TransientError(StepError):
    """A retry may succeed: the state machine retries it by name (with backoff) before giving up."""


class InvalidEvent(PermanentError, ValidationError):
    """The event is not what the step expects: pydantic's ValidationError (so a ValueError too, and caught wherever
    one was), rebuilt without the input, so the message names fields, never values (they may be rows)."""


class Misconfigured(PermanentError):
    """A setting the step needs from the stack is missing or invalid: fix the stack, then run again."""


class AwsThrottled(TransientError):
    """An AWS call was throttled (after boto3's own retries)."""


class AwsUnavailable(TransientError):
    """An AWS service (S3, SageMaker, ...) answered 5xx or could not be reached (after boto3's own retries)."""


# The codes botocore's standard retry mode treats as throttling (ThrottledRetryableChecker._THROTTLED_ERROR_CODES)
# and as transient (TransientRetryableChecker: these codes, and HTTP 500, 502, 503 and 504), in
# botocore/retries/standard.py: what boto3 already retried before giving up, so worth a later retry too.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


def invalid_event(exc: ValidationError) -> InvalidEvent:
    """A pydantic ValidationError as an InvalidEvent: its first ten errors, their input values hidden (ten keep the
    message well inside the 32,768 characters a Step Functions error cause holds: SensitiveCause in botocore/data/
    stepfunctions/2016-11-23/service-2.json)."""
    errors: Any = exc.errors(include_url=False)[:10]
    return InvalidEvent.from_exception_data(exc.title, errors, hide_input=True)


def validated(parse: Callable[[], T]) -> T:
    """``parse()`` (a pydantic model_validate), a ValidationError raised as InvalidEvent."""
    try:
        return parse()
    except ValidationError as exc:
        raise invalid_event(exc) from None


def step_error(exc: BaseException) -> StepError | None:
    """The step error ``exc`` stands for (to raise from it), or None to let it propagate as it is."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, StepError):
        return None
    if isinstance(exc, ValidationError):
        return invalid_event(exc)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        operation = getattr(exc, "operation_name", "an AWS call")
        if code in THROTTLING_CODES:
            return AwsThrottled(f"{operation} was throttled ({code})")
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
            return AwsUnavailable(f"{operation} failed with {code or status}")
        return None
    if isinstance(exc, ConnectionError | HTTPClientError):  # botocore's own: endpoint unreachable, read timeout
        return AwsUnavailable(f"an AWS endpoint could not be reached ({type(exc).__name__})")
    return None


def leaf_errors() -> dict[str, type[StepError]]:
    """Every StepError a step can raise, by the name Lambda reports: the subclasses imported so far, except the two
    categories themselves (the definitions' checks import the errors modules first)."""
    found: dict[str, type[StepError]] = {}
    todo: list[type[StepError]] = [StepError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in (PermanentError, TransientError):
                found[sub.__name__] = sub
            todo.append(sub)
    return found
