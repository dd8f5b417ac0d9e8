"""Every ``READMIT_*`` environment variable, declared once: its type, default and meaning (explicit arguments win).

``Settings`` is a pydantic-settings model: one field per variable, named as the variable without its ``READMIT_``
prefix. Components read it once, where they start (``Settings.from_env(env)``, which takes a mapping so tests need
not touch ``os.environ``); an invalid value fails there with a ``SettingsError`` that names the variable. Unset
and empty mean the default, as ``os.environ.get(NAME) or default`` did before (except ``EMPTY_IS_A_VALUE``). The
``ENV_*`` names and the helper functions below (``home()``, ``registry_uri()``, ...) derive from the same
declaration. ``raw()`` reads one declared variable without building the object: for the per-request reads (the
identifier salt on /predict, GET /model/shadow's log and outcomes).

The retraining gate's thresholds are declared here as variables only; their defaults live in
``chalicelib.lifecycle.gate.GateConfig`` (core cannot import the lifecycle, and one place is enough).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, SecretStr, ValidationError, ValidationInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "READMIT_"
PROMOTION_POLICIES = ("auto", "manual")
MASK = "****"


class SettingsError(ValueError):
    """A READMIT_* variable holds a value its setting cannot take; the message names the variable."""


def env_name(field: str) -> str:
    """READMIT_ + the field name in capitals: the one rule from a field to its variable."""
    return PREFIX + field.upper()


def _non_negative(value: float, info: ValidationInfo) -> float:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{env_name(info.field_name or '')} must be 0 or more, got {value}")
    return value


def _policy(value: Any) -> Any:
    """auto or manual, any case and spacing; anything else is refused with the variable's name."""
    policy = str(value).strip().lower()
    if policy not in PROMOTION_POLICIES:
        raise ValueError(f"{env_name('promotion_policy')} must be one of {PROMOTION_POLICIES}, got {policy!r}")
    return policy


def _finite(value: float | None, info: ValidationInfo) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{env_name(info.field_name or '')} must be a finite number, got {value}")
    return value


NonNegativeInt = Annotated[int, AfterValidator(_non_negative)]
NonNegativeFloat = Annotated[float, AfterValidator(_non_negative)]
FiniteFloat = Annotated[float | None, AfterValidator(_finite)]


class Settings(BaseSettings):
    """The effective configuration. Build it with ``from_env`` (any mapping, default os.environ); ``Settings()``
    also works (pydantic-settings reads os.environ). Secrets are ``SecretStr``: masked in repr and ``describe``."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True, validate_default=False
    )

    # ---- local state, data, model and registry -----------------------------------------------------------
    home: Path = Field(Path(".readmit"), description="Where local state lives (registry, history store, logs)")
    data: str | None = Field(None, description="The UCI data set (zip, csv or csv.gz); else the cache or a download")
    registry: str | None = Field(None, description="Registry URI: a folder or s3://bucket/prefix (else home/registry)")
    model: str | None = Field(None, description="A bundle folder or URI that overrides the registry's champion")
    check_interval: float = Field(300.0, description="Seconds between the API's checks for a new champion")
    debug: bool = Field(False, description="CLI: show tracebacks of unexpected errors (1/true)")
    state_machine: str | None = Field(None, description="The retraining state machine ARN (readmit retrain --remote)")

    # ---- identifiers and logs ------------------------------------------------------------------------------
    id_salt: SecretStr | None = Field(
        None, description="Salt for hashing identifiers in logs and stores (else a per-installation salt in home)"
    )
    id_salt_secret: str | None = Field(None, description="On AWS: Secrets Manager id of the salt (wins over ID_SALT)")
    prediction_log: str | None = Field(
        None, description="Prediction log: s3://bucket/prefix, a folder, or firehose://stream (the API); else home"
    )
    history: str | None = Field(
        None, description="History store: dynamodb://table or a SQLite file (else home/history.sqlite3)"
    )
    outcomes_uri: str | None = Field(None, description="Where observed outcomes are uploaded (s3://… or a folder)")
    drift_window_hours: float = Field(24.0, description="The drift monitor's window of recent predictions, in hours")

    # ---- authentication -------------------------------------------------------------------------------------
    auth: str = Field("none", description="API authentication: none | dev | jwks | apigateway")
    dev_auth_secret: SecretStr | None = Field(None, description="dev mode's HS256 key (else home/dev-auth.key)")
    auth_issuer: str | None = Field(None, description="jwks mode: https://cognito-idp.<region>.amazonaws.com/<pool>")
    auth_client_ids: str | None = Field(None, description="jwks mode: accepted app client ids, comma-separated")

    # ---- model governance: approval and shadow runs (issue #15) ---------------------------------------------
    promotion_policy: Annotated[Literal["auto", "manual"], BeforeValidator(_policy)] = Field(
        "auto", description="auto: a gate pass is promoted; manual: it waits for an approval"
    )
    model_package_group: str | None = Field(None, description="SageMaker Model Package Group (unset: no copy)")
    min_shadow_requests: NonNegativeInt = Field(0, description="Requests a challenger must score in shadow first")
    min_shadow_hours: NonNegativeFloat = Field(0.0, description="Hours a challenger must be the shadow model first")
    shadow_log: str | None = Field(
        None, description="The readable log GET /model/shadow reports on when the API's is Firehose"
    )

    # ---- retraining: SageMaker jobs, tracking, the gate ------------------------------------------------------
    training_image: str | None = Field(None, description="The training image in this account's ECR")
    sagemaker_role_arn: str | None = Field(None, description="The role SageMaker training jobs run as")
    artifact_uri: str | None = Field(None, description="s3://… prefix for the jobs' model.tar.gz")
    training_instance: str = Field("ml.m5.xlarge", description="The training jobs' instance type")
    training_kms_key: str | None = Field(None, description="KMS key of the jobs' artifacts and volumes")
    training_job_name: str | None = Field(None, description="Set on a training job: tags its MLflow run")
    ml_root: Path = Field(Path("/opt/ml"), description="Tests only: replaces SageMaker's /opt/ml")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking: a URI or SageMaker server ARN; off or empty: none; unset: SQLite in home"
    )
    mlflow_experiment: str = Field("readmit", description="MLflow experiment name")
    gate_min_auc: FiniteFloat = Field(None, description="Gate: ROC-AUC floor (unset: GateConfig.min_auc)")
    gate_max_auc_drop: FiniteFloat = Field(
        None, description="Gate: how far below the champion's AUC (unset: GateConfig.max_auc_drop)"
    )
    gate_max_ece: FiniteFloat = Field(None, description="Gate: largest calibration error (unset: GateConfig.max_ece)")

    # ---- batch scoring -------------------------------------------------------------------------------------
    batch_capacity_pct: float = Field(10.0, description="The care team's capacity: the top q% of a scored list")
    batch_kms_key: str | None = Field(None, description="KMS key scored files are written with (else the bucket's)")

    # ---- similar patients, ingest and /chat (issue #5) ------------------------------------------------------
    embedder: str = Field("local", description="local (offline, deterministic) | bedrock (Titan Text Embeddings v2)")
    embed_model: str = Field("amazon.titan-embed-text-v2:0", description="Bedrock embedding model id")
    embed_dimensions: int = Field(512, description="Titan v2 embedding size: 256, 512 or 1024")
    vector_store: str = Field("numpy", description="numpy | qdrant | opensearch")
    vector_collection: str = Field("readmit-encounters", description="Qdrant collection / OpenSearch index name")
    index_dir: Path | None = Field(None, description="The numpy store's folder (else home/index)")
    qdrant_url: str | None = Field(None, description="A Qdrant server (the EKS deployment); else embedded mode")
    qdrant_path: str | None = Field(None, description="Embedded Qdrant's folder (else home/qdrant)")
    qdrant_api_key: SecretStr | None = Field(None, description="The Qdrant server's API key")
    qdrant_api_key_secret: str | None = Field(
        None, description="On AWS: Secrets Manager id of the Qdrant API key (wins over QDRANT_API_KEY)"
    )
    qdrant_replication_factor: int = Field(2, description="Copies of each shard on a Qdrant server")
    qdrant_write_consistency: int = Field(1, description="Qdrant replicas that must acknowledge a write")
    opensearch_url: str | None = Field(None, description="https://… endpoint of OpenSearch Service / Serverless")
    ingest_queue_url: str | None = Field(None, description="The embedder's own queue (large files fan out)")
    ingest_chunk_rows: int = Field(2000, description="Rows per ingest chunk: larger files fan out into chunks")
    ingest_report_uri: str | None = Field(
        None, description="Invalid-row reports: s3://bucket/prefix or a folder (else home/ingest-reports)"
    )
    ingest_kms_key: str | None = Field(None, description="KMS key ingest reports are written with")
    chat_model: str | None = Field(None, description="Bedrock Converse model id for /chat; unset: template answers")
    guardrail_id: str | None = Field(None, description="Bedrock Guardrail (id or ARN) on /chat; unset: none")
    guardrail_version: str | None = Field(None, description="The guardrail's version: a number or DRAFT")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings ``env`` (default os.environ) gives: an unset or empty variable takes the default. Only the
        declared names are read, so a test's small mapping is the whole environment."""
        return _validate(_given(os.environ if env is None else env))


def _args(annotation: Any) -> tuple[Any, ...]:
    return getattr(annotation, "__args__", (annotation,))


ENV: dict[str, str] = {field: env_name(field) for field in Settings.model_fields}  # field → variable
FIELD: dict[str, str] = {name: field for field, name in ENV.items()}  # variable → field
SECRETS = frozenset(f for f, info in Settings.model_fields.items() if SecretStr in _args(info.annotation))


# Unset or empty is the default, except where an empty value says something ("" tracking URI: tracking off).
EMPTY_IS_A_VALUE = frozenset({"mlflow_tracking_uri"})


def _given(env: Mapping[str, str], fields: tuple[str, ...] | None = None) -> dict[str, str]:
    return {f: v for f in fields or ENV if (v := env.get(ENV[f])) or (v == "" and f in EMPTY_IS_A_VALUE)}


def _validate(values: Mapping[str, Any]) -> Settings:
    """BaseModel's validation alone. BaseSettings.__init__ (which model_validate calls too) would merge its own
    sources into the values: os.environ into a test's mapping, and ~5 ms of source introspection per call."""
    settings = Settings.__new__(Settings)
    try:
        BaseModel.__init__(settings, **values)
        return settings
    except ValidationError as e:
        raise SettingsError("; ".join(_explain(err, values) for err in e.errors())) from None


def _explain(err: Any, values: Mapping[str, Any]) -> str:
    field = str(err["loc"][0]) if err["loc"] else ""
    name, given = ENV.get(field, field), values.get(field)
    if err["type"] == "value_error":  # our validators' messages already name the variable
        return str(err["ctx"]["error"])
    if err["type"] in ("float_parsing", "int_parsing", "int_from_float"):
        return f"{name}={given!r} is not a number" + (" (a whole number)" if err["type"] != "float_parsing" else "")
    shown = MASK if field in SECRETS else repr(given)
    return f"{name}={shown}: {err['msg']}"


def default(field: str) -> Any:
    """The declared default of one setting (modules above core name their constants after it)."""
    return Settings.model_fields[field].default


def raw(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The text of one declared variable (None when unset or empty), read without building Settings: for the
    per-request reads only. An undeclared name is a KeyError, so a typo cannot read nothing silently."""
    if name not in FIELD:
        raise KeyError(f"{name} is not a declared setting (chalicelib/core/settings.py)")
    return (os.environ if env is None else env).get(name) or None


def _one(field: str, env: Mapping[str, str] | None = None, explicit: Any = None) -> Any:
    """One setting validated alone (the explicit value, else its variable, else the default): a helper below
    fails only on its own variable, as it did when each read os.environ itself."""
    values = {field: explicit} if explicit is not None else _given(os.environ if env is None else env, (field,))
    return getattr(_validate(values), field)


# ---- the variables' names (every module and test that names one imports it from here) ---------------------------
ENV_DATA = ENV["data"]
ENV_REGISTRY = ENV["registry"]
ENV_MODEL = ENV["model"]
ENV_HOME = ENV["home"]
ENV_SALT = ENV["id_salt"]
ENV_SALT_SECRET = ENV["id_salt_secret"]
ENV_PREDICTION_LOG = ENV["prediction_log"]
ENV_HISTORY = ENV["history"]
ENV_OUTCOMES_URI = ENV["outcomes_uri"]
ENV_CHECK_INTERVAL = ENV["check_interval"]
ENV_AUTH = ENV["auth"]
ENV_DEV_AUTH_SECRET = ENV["dev_auth_secret"]
ENV_AUTH_ISSUER = ENV["auth_issuer"]
ENV_AUTH_CLIENT_IDS = ENV["auth_client_ids"]
ENV_EMBEDDER = ENV["embedder"]
ENV_EMBED_MODEL = ENV["embed_model"]
ENV_EMBED_DIMENSIONS = ENV["embed_dimensions"]
ENV_VECTOR_STORE = ENV["vector_store"]
ENV_INDEX_DIR = ENV["index_dir"]
ENV_QDRANT_URL = ENV["qdrant_url"]
ENV_QDRANT_PATH = ENV["qdrant_path"]
ENV_QDRANT_API_KEY = ENV["qdrant_api_key"]
ENV_QDRANT_API_KEY_SECRET = ENV["qdrant_api_key_secret"]
ENV_QDRANT_REPLICATION_FACTOR = ENV["qdrant_replication_factor"]
ENV_QDRANT_WRITE_CONSISTENCY = ENV["qdrant_write_consistency"]
ENV_OPENSEARCH_URL = ENV["opensearch_url"]
ENV_VECTOR_COLLECTION = ENV["vector_collection"]
ENV_CHAT_MODEL = ENV["chat_model"]
ENV_GUARDRAIL_ID = ENV["guardrail_id"]
ENV_GUARDRAIL_VERSION = ENV["guardrail_version"]
ENV_INGEST_QUEUE_URL = ENV["ingest_queue_url"]
ENV_INGEST_CHUNK_ROWS = ENV["ingest_chunk_rows"]
ENV_INGEST_REPORT_URI = ENV["ingest_report_uri"]
ENV_INGEST_KMS_KEY = ENV["ingest_kms_key"]
ENV_PROMOTION_POLICY = ENV["promotion_policy"]
ENV_MODEL_PACKAGE_GROUP = ENV["model_package_group"]
ENV_MIN_SHADOW_REQUESTS = ENV["min_shadow_requests"]
ENV_MIN_SHADOW_HOURS = ENV["min_shadow_hours"]
ENV_SHADOW_LOG = ENV["shadow_log"]
ENV_BATCH_CAPACITY_PCT = ENV["batch_capacity_pct"]
ENV_BATCH_KMS_KEY = ENV["batch_kms_key"]
ENV_TRAINING_IMAGE = ENV["training_image"]
ENV_SAGEMAKER_ROLE_ARN = ENV["sagemaker_role_arn"]
ENV_ARTIFACT_URI = ENV["artifact_uri"]
ENV_TRAINING_INSTANCE = ENV["training_instance"]
ENV_TRAINING_KMS_KEY = ENV["training_kms_key"]
ENV_TRAINING_JOB_NAME = ENV["training_job_name"]
ENV_ML_ROOT = ENV["ml_root"]
ENV_MLFLOW_TRACKING_URI = ENV["mlflow_tracking_uri"]
ENV_MLFLOW_EXPERIMENT = ENV["mlflow_experiment"]
ENV_GATE_MIN_AUC = ENV["gate_min_auc"]
ENV_GATE_MAX_AUC_DROP = ENV["gate_max_auc_drop"]
ENV_GATE_MAX_ECE = ENV["gate_max_ece"]
ENV_DRIFT_WINDOW_HOURS = ENV["drift_window_hours"]
ENV_STATE_MACHINE = ENV["state_machine"]
ENV_DEBUG = ENV["debug"]

DEFAULT_COLLECTION: str = default("vector_collection")
DEFAULT_EMBED_MODEL: str = default("embed_model")


# ---- helpers: one setting each, the explicit argument first ------------------------------------------------------
def home() -> Path:
    """Local state folder: $READMIT_HOME, else ./.readmit (next to the project, easy to inspect and delete)."""
    return Path(_one("home")).expanduser()


def registry_uri(explicit: str | None = None) -> str:
    return explicit or _one("registry") or str(home() / "registry")


def index_dir(explicit: str | None = None) -> Path:
    return Path(explicit or _one("index_dir") or home() / "index")


def promotion_policy(explicit: str | None = None) -> str:
    """auto or manual: the explicit value, else $READMIT_PROMOTION_POLICY, else auto (today's behaviour)."""
    return str(_one("promotion_policy", explicit=explicit or None))


def min_shadow_requests(explicit: int | None = None) -> int:
    """Minimum shadow requests before promotion: the explicit value, else $READMIT_MIN_SHADOW_REQUESTS, else 0."""
    return int(_one("min_shadow_requests", explicit=explicit))


def min_shadow_hours(explicit: float | None = None) -> float:
    """Minimum hours in shadow before promotion: the explicit value, else $READMIT_MIN_SHADOW_HOURS, else 0."""
    return float(_one("min_shadow_hours", explicit=explicit))


# ---- the effective configuration, for `readmit settings` ---------------------------------------------------------
def _text(value: Any, secret: bool) -> str:
    if value is None:
        return ""
    if secret:
        return MASK
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe(env: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """One row per setting: name, effective value (secrets "****" when set), default, source (env or default)
    and doc. An invalid value raises SettingsError, as the component reading it would at start-up."""
    env = os.environ if env is None else env
    effective, given = Settings.from_env(env), _given(env)
    rows = []
    for field, info in Settings.model_fields.items():
        name, secret = ENV[field], field in SECRETS
        rows.append(
            {
                "name": name,
                "value": _text(getattr(effective, field), secret),
                "default": _text(info.default, secret),
                "source": "env" if field in given else "default",
                "doc": info.description or "",
            }
        )
    return rows
