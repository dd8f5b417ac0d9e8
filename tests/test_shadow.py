"""Shadow runs before promotion (issue #15): the challenger under the registry alias "shadow" scores the API's
requests beside the champion, off the request path, into the same prediction log; `readmit shadow-report` and
GET /model/shadow compare the two; the promote step can require a minimum shadow period."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from chalicelib.cli import main as cli
from chalicelib.core.audit import AUDIT_TIME, AuditRecord, LocalPredictionLog
from chalicelib.core.identifiers import hash_id
from chalicelib.core.post_invoke import PostInvoke
from chalicelib.data.schema import EXCLUDED_DISPOSITIONS
from chalicelib.monitoring import shadow_report as shadow_reporting
from chalicelib.monitoring.shadow import ShadowScorer
from chalicelib.monitoring.shadow_report import shadow_ready, shadow_report
from chalicelib.registry.provider import ModelProvider
from chalicelib.registry.registry import SHADOW, Registry
from chalicelib.serving import auth
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.service import Predictor
from tests.replay import EVENTS
from tests.test_browser_e2e import open_page
from tests.test_server_e2e import start_server

SECRET = "a-dev-secret-that-is-long-enough-for-hs256"


def example(encounter_id: int = 900001) -> dict[str, Any]:
    return {**json.loads(json.loads((EVENTS / "api_predict.json").read_text())["body"]), "encounter_id": encounter_id}


@pytest.fixture(scope="module")
def challenger_bundle(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real model, different from small_bundle (fewer, deeper trees)."""
    from chalicelib.model.train import TrainConfig, train

    time.sleep(1.1)  # versions carry a timestamp to the second
    cfg = TrainConfig(n_estimators=25, folds=3, baselines=False, holdout_frac=0.2)
    return train(sample_csv, tmp_path_factory.mktemp("challenger"), cfg).bundle_dir


class AfterResponseHooks:
    """post_invoke.PostInvoke as the Lambda extension runs it: registered flushes run once the handler has returned
    (``after_response``), never inside it. Records the order of events."""

    mode = "extension"

    def __init__(self, events: list[str]) -> None:
        self.flushes: list[Callable[[float | None], object]] = []
        self.events = events

    def register(self, flush: Callable[[float | None], object]) -> None:
        self.flushes.append(flush)

    def after_response(self) -> None:
        for flush in self.flushes:
            flush(time.time() + 5)


class Counting:
    """Wraps a bundle's ``risk`` to record when the challenger scores."""

    def __init__(self, events: list[str], risk: Callable[[np.ndarray], np.ndarray]) -> None:
        self.events, self._risk = events, risk

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.events.append(f"challenger scored {len(X)}")
        return self._risk(X)


@dataclasses.dataclass
class World:
    api: ReadmitAPI
    log: LocalPredictionLog
    scorer: ShadowScorer | None
    hooks: AfterResponseHooks
    events: list[str]


@pytest.fixture
def world(small_bundle: Path, challenger_bundle: Path, tmp_path: Path) -> Callable[..., World]:
    def build(with_shadow: bool = True, capacity: int = 2_000, folder: str = "log") -> World:
        events: list[str] = []
        log = LocalPredictionLog(tmp_path / folder)
        hooks = AfterResponseHooks(events)
        scorer = None
        if with_shadow:
            provider = ModelProvider(model_uri=str(challenger_bundle))
            provider.refresh_now()
            assert provider.model is not None
            object.__setattr__(provider.model, "risk", Counting(events, provider.model.risk))
            scorer = ShadowScorer(provider, log, hooks=hooks, capacity=capacity)  # type: ignore[arg-type]
        predictor = Predictor(ModelProvider(model_uri=str(small_bundle)), None, log, scorer)
        return World(ReadmitAPI(predictor, None, None), log, scorer, hooks, events)

    return build


def predict(api: ReadmitAPI, body: dict[str, Any], request_id: str) -> Any:
    return api.predict(Request(json.dumps(body).encode(), {"Content-Type": "application/json"}, {}, request_id))


# ---- the request path ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_response_is_the_champions_alone_and_identical_with_or_without_a_shadow(world: Any) -> None:
    plain, shadowed = world(with_shadow=False, folder="plain"), world()
    for i in range(3):
        a = predict(plain.api, example(900001 + i), f"req-{i}")
        b = predict(shadowed.api, example(900001 + i), f"req-{i}")
        assert a.status == b.status == 200
        assert a.body == b.body  # risk, tier, factors, version: the champion's, byte for byte
    assert shadowed.scorer is not None and b.body["model_version"] != shadowed.scorer.version
    assert not any(e.startswith("challenger") for e in shadowed.events)  # nothing scored on the request path


@pytest.mark.slow
def test_on_lambda_the_challenger_scores_after_the_response_and_both_records_share_the_request(world: Any) -> None:
    w = world()
    assert w.scorer.mode == "deferred" and w.hooks.flushes == [w.scorer.flush]
    response = predict(w.api, example(), "req-lambda")
    w.events.append("response")
    assert [r.source for r in w.log.read()] == ["api"]  # the champion's record only, so far
    w.hooks.after_response()
    assert w.events == ["response", "challenger scored 1"]
    records = {r.source: r for r in w.log.read()}
    champion, challenger = records["api"], records["shadow"]
    assert champion.request_id == challenger.request_id == "req-lambda"
    assert champion.encounter_hash == challenger.encounter_hash == hash_id(900001, kind="encounter")
    assert champion.at == challenger.at and champion.features == challenger.features  # one feature path
    assert champion.model_version == response.body["model_version"]
    assert challenger.model_version == w.scorer.version != champion.model_version
    assert challenger.risk != champion.risk
    assert w.scorer.stats.scored_requests == 1 and w.scorer.stats.busy_seconds > 0


def test_a_full_queue_drops_shadow_work_counts_it_and_leaves_the_response_alone(world: Any) -> None:
    plain, w = world(with_shadow=False, folder="plain"), world(capacity=1)
    first = predict(w.api, example(900001), "r1")
    second = predict(w.api, example(900002), "r2")  # the queue holds one row: dropped
    assert second.status == 200 and second.body == predict(plain.api, example(900002), "r2").body
    assert (w.scorer.stats.queued_requests, w.scorer.stats.dropped_requests, w.scorer.stats.dropped_rows) == (1, 1, 1)
    w.hooks.after_response()
    shadows = [r for r in w.log.read() if r.source == "shadow"]
    assert [r.request_id for r in shadows] == ["r1"] and first.status == 200


def test_batch_scoring_and_chat_never_shadow(world: Any) -> None:
    w = world()
    model = w.api.predictor.model()
    from chalicelib.serving.api_models import parse_encounter_body

    w.api.predictor.score(model, [parse_encounter_body(example())], request_id="nightly", source="batch")
    assert w.scorer.pending() == 0 and w.scorer.stats.queued_requests == 0
    body = {"question": "why?", "encounter": example()}
    chat = w.api.chat(Request(json.dumps(body).encode(), {"Content-Type": "application/json"}, {}, "chat-1"))
    assert chat.status == 200 and w.scorer.stats.queued_requests == 0


def test_a_challenger_with_other_features_or_the_champions_version_is_skipped_and_counted(
    world: Any, small_bundle: Path
) -> None:
    w = world()
    model = w.scorer.provider.model
    renamed = dataclasses.replace(
        model, meta={**model.meta, "feature_names": list(reversed(model.meta["feature_names"]))}
    )
    w.scorer.provider._model = renamed
    predict(w.api, example(), "r-features")
    w.hooks.after_response()
    assert w.scorer.stats.skipped_features == 1 and [r.source for r in w.log.read()] == ["api"]
    w.scorer.provider._model = w.api.predictor.model()  # the shadow alias names the champion: nothing to compare
    predict(w.api, example(), "r-same")
    assert w.scorer.stats.skipped_same_version == 1 and w.scorer.pending() == 0


def test_without_a_post_invoke_extension_shadow_work_is_dropped_rather_than_scored_before_the_response(
    small_bundle: Path, challenger_bundle: Path, tmp_path: Path
) -> None:
    hooks = PostInvoke()
    hooks.mode = "sync"  # registration failed: flushes run inside invocation_done(), before the response
    provider = ModelProvider(model_uri=str(challenger_bundle))
    provider.refresh_now()
    log = LocalPredictionLog(tmp_path / "log")
    scorer = ShadowScorer(provider, log, hooks=hooks)
    api = ReadmitAPI(Predictor(ModelProvider(model_uri=str(small_bundle)), None, log, scorer))
    assert predict(api, example(), "r-sync").status == 200
    hooks.invocation_done()
    assert scorer.stats.dropped_requests == 1 and scorer.stats.scored_requests == 0
    assert [r.source for r in log.read()] == ["api"]


def test_on_lambda_without_the_hook_shadow_is_off(monkeypatch: pytest.MonkeyPatch, challenger_bundle: Path) -> None:
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")
    scorer = ShadowScorer(ModelProvider(model_uri=str(challenger_bundle)), LocalPredictionLog(Path("/nonexistent")))
    assert scorer.mode == "off"


def test_in_a_server_a_daemon_thread_scores_the_queue(
    small_bundle: Path, challenger_bundle: Path, tmp_path: Path
) -> None:
    log = LocalPredictionLog(tmp_path / "log")
    scorer = ShadowScorer(ModelProvider(model_uri=str(challenger_bundle)), log, hooks=PostInvoke(), check_interval=0.05)
    try:
        assert scorer.mode == "background"
        deadline = time.monotonic() + 30
        while scorer.version is None and time.monotonic() < deadline:  # the worker loads the challenger
            time.sleep(0.05)
        api = ReadmitAPI(Predictor(ModelProvider(model_uri=str(small_bundle)), None, log, scorer))
        for i in range(5):
            assert predict(api, example(900001 + i), f"bg-{i}").status == 200
        while scorer.stats.scored_requests < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(r.request_id for r in log.read() if r.source == "shadow") == [f"bg-{i}" for i in range(5)]
    finally:
        scorer.close()
    assert scorer._thread is not None and not scorer._thread.is_alive()


# ---- the report ------------------------------------------------------------------------------------------------
T0 = datetime(2026, 9, 1, 12, tzinfo=UTC)  # more than 30 days before NOW: the labels have matured
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def record(request_id: str, eid: int, source: str, version: str, risk: float, tier: str, at: datetime = T0) -> Any:
    return AuditRecord(
        request_id=request_id,
        at=at.strftime(AUDIT_TIME),
        model_version=version,
        risk=risk,
        risk_tier=tier,
        encounter_hash=hash_id(eid, kind="encounter"),
        features=[1.0],
        source=source,
    )


def hand_made_log(folder: Path) -> LocalPredictionLog:
    """Four requests seen by champion A and shadow B (risks chosen so AUC and ECE are known by hand), one api record
    with no shadow twin, one shadow record of another challenger, and a batch record (never paired)."""
    log = LocalPredictionLog(folder)
    champion = [(0.1, "low"), (0.4, "high"), (0.35, "medium"), (0.8, "high")]
    challenger = [(0.2, "low"), (0.3, "medium"), (0.6, "high"), (0.9, "high")]
    records = []
    for i, ((ca, ct), (sa, st)) in enumerate(zip(champion, challenger, strict=True)):
        records.append(record(f"q{i}", i, "api", "A", ca, ct))
        records.append(record(f"q{i}", i, "shadow", "B", sa, st))
    records.append(record("q9", 9, "api", "A", 0.5, "high"))  # not shadowed (queue full, say)
    records.append(record("q0", 0, "shadow", "C", 0.99, "high"))  # an earlier challenger
    records.append(record("n1", 0, "batch", "A", 0.1, "low"))
    log.append(records)
    return log


def test_the_report_on_a_hand_made_log(tmp_path: Path) -> None:
    labels = {hash_id(i, kind="encounter"): bool(y) for i, y in enumerate([0, 0, 1, 1])}
    report = shadow_report(hand_made_log(tmp_path / "log"), None, None, labels, version="B", now=NOW)
    assert report["requests_compared"] == report["encounters_compared"] == 4
    assert report["shadow_versions"] == {"B": 4} and report["champion_versions"] == {"A": 4}
    # tiers: (low, low) (high, medium) (medium, high) (high, high): 2 of 4 agree
    assert report["tier_agreement"] == 0.5
    assert report["tier_table"]["counts"] == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]  # rows champion low/medium/high
    # high-risk lists: champion {q1, q3}, shadow {q2, q3}: 1 shared of 3 → Jaccard distance 2/3
    assert report["high_risk"] == {
        "champion": 2,
        "shadow": 2,
        "both": 1,
        "entering": 1,
        "leaving": 1,
        "jaccard_distance": pytest.approx(2 / 3),
    }
    shifts = [0.1, -0.1, 0.25, 0.1]
    assert report["risk_shift"]["mean"] == pytest.approx(np.mean(shifts))
    assert report["risk_shift"]["sd"] == pytest.approx(np.std(shifts, ddof=1))
    assert report["risk_shift"]["mean_abs"] == pytest.approx(0.1375)
    realized = report["realized"]
    assert realized["matured"] == realized["labelled"] == 4
    # champion 0.1 0.4 0.35 0.8 vs labels 0 0 1 1: 3 of 4 positive-negative pairs ordered → AUC 0.75;
    # ECE (10 bins, one risk each): (0.1 + 0.4 + 0.65 + 0.2) / 4. Shadow: perfectly ordered, (0.2+0.3+0.4+0.1) / 4.
    assert realized["champion"] == {"n": 4, "readmitted": 2, "roc_auc": 0.75, "ece": pytest.approx(0.3375)}
    assert realized["shadow"] == {"n": 4, "readmitted": 2, "roc_auc": 1.0, "ece": pytest.approx(0.25)}


def test_labels_count_only_once_matured(tmp_path: Path) -> None:
    labels = {hash_id(i, kind="encounter"): bool(y) for i, y in enumerate([0, 0, 1, 1])}
    early = shadow_report(hand_made_log(tmp_path / "log"), None, None, labels, version="B", now=T0 + timedelta(days=29))
    assert early["realized"]["matured"] == 0 and early["realized"]["champion"] is None
    assert early["requests_compared"] == 4  # the comparison itself needs no labels


def test_auc_and_ece_match_the_training_sides_definitions() -> None:
    from sklearn.metrics import roc_auc_score

    from chalicelib.model.evaluation import ece

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.random(500), 2)  # rounded: ties, which count one half
    assert shadow_reporting.auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert shadow_reporting.ece(y, p) == pytest.approx(ece(y, p))
    assert shadow_reporting.auc([1, 1], [0.2, 0.3]) is None


def test_an_ambiguous_or_unpaired_record_is_counted_not_paired(tmp_path: Path) -> None:
    log = LocalPredictionLog(tmp_path / "log")
    no_id = {"encounter_hash": None}  # a batch whose encounters carry no ids: (request, None) is not unique
    log.append(
        [
            record("b", 0, "api", "A", 0.1, "low").model_copy(update=no_id),
            record("b", 1, "api", "A", 0.2, "low").model_copy(update=no_id),
            record("b", 0, "shadow", "B", 0.1, "low").model_copy(update=no_id),
            record("lonely", 5, "shadow", "B", 0.3, "medium"),
        ]
    )
    report = shadow_report(log, None, None, None, now=NOW)
    assert report["encounters_compared"] == 0
    assert report["left_out"] == {"ambiguous": 1, "shadow_without_champion": 1}


def test_the_record_of_care_readers_leave_shadow_records_out(tmp_path: Path) -> None:
    from chalicelib.monitoring import monitor, outcomes

    log = hand_made_log(tmp_path / "log")
    _X, risk, versions = monitor.window_arrays(log, T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert versions == {"A"} and len(risk) == 6  # five api records and the batch one
    labels = {hash_id(i, kind="encounter"): bool(y) for i, y in enumerate([0, 0, 1, 1])}
    assert outcomes.realized(log, labels, T0 - timedelta(hours=1), T0 + timedelta(hours=1), NOW)["predictions"] == 6


# ---- the promotion rule ----------------------------------------------------------------------------------------
def test_shadow_ready_needs_the_shadow_alias_the_hours_and_the_requests(
    small_bundle: Path, challenger_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry.open(tmp_path / "reg", validate=False)
    a, b = registry.register(small_bundle), registry.register(challenger_bundle)
    registry.promote(a, "first")
    log = LocalPredictionLog(tmp_path / "log")
    assert shadow_ready(registry, log, b) == (True, "no minimum shadow period is required")  # the defaults: 0 and 0
    monkeypatch.setenv("READMIT_MIN_SHADOW_HOURS", "24")
    monkeypatch.setenv("READMIT_MIN_SHADOW_REQUESTS", "3")
    ready, why = shadow_ready(registry, log, b)
    assert not ready and "has not run in shadow" in why
    registry.set_alias(SHADOW, b, "shadow before promotion")
    set_at = datetime.now(UTC)
    ready, why = shadow_ready(registry, log, b, set_at + timedelta(hours=2))
    assert not ready and "of the 24 h required" in why
    later = set_at + timedelta(hours=25)
    log.append([record(f"s{i}", i, "shadow", b, 0.2, "low", set_at + timedelta(hours=1)) for i in range(2)])
    log.append([record("other", 7, "shadow", "C", 0.2, "low", set_at + timedelta(hours=1))])  # another version
    ready, why = shadow_ready(registry, log, b, later)
    assert not ready and "scored 2 requests in shadow of the 3 required" in why
    log.append([record("s2", 2, "shadow", b, 0.2, "low", set_at + timedelta(hours=3))])
    assert shadow_ready(registry, log, b, later)[0] is True
    assert shadow_ready(registry, None, b, later) == (False, "no prediction log to count shadow requests in")
    monkeypatch.setenv("READMIT_MIN_SHADOW_HOURS", "-1")
    with pytest.raises(ValueError, match="READMIT_MIN_SHADOW_HOURS"):
        shadow_ready(registry, log, b, later)


# ---- the route and the command -------------------------------------------------------------------------------
@pytest.fixture
def registry_world(
    small_bundle: Path, challenger_bundle: Path, tmp_path: Path
) -> Iterator[tuple[Registry, ReadmitAPI, ShadowScorer, AfterResponseHooks]]:
    registry = Registry.open(tmp_path / "registry", validate=False)
    a, _b = registry.register(small_bundle), registry.register(challenger_bundle)
    registry.promote(a, "first")
    hooks = AfterResponseHooks([])
    log = LocalPredictionLog(tmp_path / "log")
    uri = str(tmp_path / "registry")
    scorer = ShadowScorer(ModelProvider(registry_uri=uri, alias=SHADOW, check_interval=0), log, hooks=hooks)  # type: ignore[arg-type]
    api = ReadmitAPI(Predictor(ModelProvider(registry_uri=uri), None, log, scorer), authenticator=auth.DevAuth(SECRET))
    yield registry, api, scorer, hooks


def test_the_route_needs_admin_and_reports_no_shadow_then_the_shadow(registry_world: Any) -> None:
    registry, api, scorer, hooks = registry_world
    dev = auth.DevAuth(SECRET)
    admin = {"Authorization": f"Bearer {dev.issue('ops')}"}
    nurse = {"Authorization": f"Bearer {dev.issue('nurse', (auth.PREDICT,))}"}
    assert api.model_shadow(Request(None, nurse)).status == 403
    hooks.after_response()  # the alias check runs off the request path
    none = api.model_shadow(Request(None, admin))
    assert none.status == 200 and none.body["shadow_version"] is None and none.body["encounters_compared"] == 0
    b = next(v for v in registry.list_versions() if v != registry.champion())
    registry.set_alias(SHADOW, b, "shadow before promotion")
    hooks.after_response()  # loads the challenger
    assert scorer.version == b
    body = json.dumps(example()).encode()
    for i in range(3):
        request = Request(body, {"Content-Type": "application/json", **nurse}, {}, f"route-{i}")
        assert api.predict(request).status == 200
        hooks.after_response()
    report = api.model_shadow(Request(None, admin)).body
    assert report["shadow_version"] == b and report["champion_version"] == registry.champion()
    assert report["requests_compared"] == 3 and report["worker"]["scored_requests"] == 3
    assert report["worker"]["loaded_version"] == b and report["worker"]["dropped_requests"] == 0
    assert api.model_shadow(Request(None, admin, {"hours": "x"})).status == 400


def test_the_command_prints_the_report(registry_world: Any, tmp_path: Path, capsys: Any) -> None:
    registry, api, _scorer, hooks = registry_world
    b = next(v for v in registry.list_versions() if v != registry.champion())
    registry.set_alias(SHADOW, b, "shadow before promotion")
    hooks.after_response()
    token = auth.DevAuth(SECRET).issue("nurse", (auth.PREDICT,))
    for i in range(2):
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        api.predict(Request(json.dumps(example(900001 + i)).encode(), headers, {}, f"cli-{i}"))
    hooks.after_response()
    argv = ["shadow-report", "--log", str(tmp_path / "log"), "--registry", str(tmp_path / "registry"), "--json"]
    assert cli.main([*argv, "--hours", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shadow_version"] == b and out["requests_compared"] == 2 and out["encounters_compared"] == 2
    assert cli.main([*argv, "--since", "2999-01-01T00:00:00"]) == 0
    assert json.loads(capsys.readouterr().out)["requests_compared"] == 0
    with pytest.raises(SystemExit):
        cli.main([*argv, "--since", "yesterday"])


# ---- end to end over HTTP ----------------------------------------------------------------------------------------
def real_encounters(sample_csv: Path, n: int) -> list[dict[str, Any]]:
    """n in-cohort rows of the real data as /predict takes them: number columns as JSON numbers, '?' as sent."""
    from chalicelib.data.schema import COLUMNS

    numbers = {c.name for c in COLUMNS if c.kind in ("id", "int", "code")}
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    frame = frame[~frame["discharge_disposition_id"].astype(int).isin(EXCLUDED_DISPOSITIONS)]
    rows = frame.sample(n, random_state=11).to_dict("records")
    return [{k: int(v) if k in numbers and v not in ("", "?") else v for k, v in row.items()} for row in rows]


@pytest.mark.slow
def test_end_to_end_shadow_then_report_then_promote_swaps_the_running_server(
    small_bundle: Path,
    challenger_bundle: Path,
    sample_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import urllib.error
    import urllib.request

    registry = Registry.open(tmp_path / "registry")
    a, b = registry.register(small_bundle), registry.register(challenger_bundle)
    registry.promote(a, "champion A")
    registry.set_alias(SHADOW, b, "approved challenger: shadow before promotion")  # `readmit registry shadow B`
    monkeypatch.setenv("READMIT_DEV_AUTH_SECRET", SECRET)
    server = start_server(tmp_path, tmp_path / "registry", 0.2, "--workers", "2", "--auth", "dev")
    dev = auth.DevAuth(SECRET)
    nurse, admin = dev.issue("nurse", (auth.PREDICT,)), dev.issue("ops")

    def call(method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        encounters = real_encounters(sample_csv, 40)
        deadline = time.monotonic() + 60
        loaded = 0
        while loaded < 8 and time.monotonic() < deadline:  # each worker loads the challenger off the request path
            status, report = call("GET", "/model/shadow", admin)
            assert status == 200 and report["shadow_version"] == b  # the alias, from the registry
            loaded = loaded + 1 if report["worker"]["loaded_version"] == b else 0
            time.sleep(0.1)
        for encounter in encounters:
            status, body = call("POST", "/predict", nurse, encounter)
            assert status == 200 and body["model_version"] == a, body  # the champion answers
        log = tmp_path / "home" / "predictions"
        argv = ["shadow-report", "--log", str(log), "--registry", str(tmp_path / "registry"), "--json"]
        monkeypatch.setenv("READMIT_HOME", str(tmp_path / "home"))
        report: dict[str, Any] = {}
        from_cli: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert cli.main(argv) == 0
            from_cli = report = json.loads(capsys.readouterr().out)
            if report["encounters_compared"] == len(encounters):
                break
            time.sleep(0.2)
        assert report["shadow_version"] == b and report["champion_version"] == a
        assert report["requests_compared"] == report["encounters_compared"] == len(encounters)
        assert report["shadow_versions"] == {b: len(encounters)} and report["champion_versions"] == {a: len(encounters)}
        assert 0 < report["tier_agreement"] <= 1 and report["risk_shift"]["mean_abs"] > 0
        status, over_http = call("GET", "/model/shadow", admin)
        assert status == 200 and over_http["requests_compared"] == from_cli["requests_compared"]
        assert over_http["tier_table"] == from_cli["tier_table"]
        # the same traffic 31 days on, with its outcomes: both models' realized AUC on the same encounters
        labels = {
            hash_id(e["encounter_id"], "test-salt", kind="encounter"): e["readmitted"] == "<30" for e in encounters
        }
        later = shadow_report(
            LocalPredictionLog(log), None, None, labels, version=b, now=datetime.now(UTC) + timedelta(days=31)
        )["realized"]
        assert later["labelled"] == len(encounters) and sum(labels.values()) > 0
        assert later["champion"]["roc_auc"] is not None and later["shadow"]["roc_auc"] is not None
        assert later["champion"]["roc_auc"] != later["shadow"]["roc_auc"]
        # promote the challenger: the running server swaps, and a shadow that is the champion scores nothing
        registry.promote(b, "shadow period passed")
        while time.monotonic() < deadline + 30:
            if all(call("POST", "/predict", nurse, encounters[0])[1]["model_version"] == b for _ in range(4)):
                break
            time.sleep(0.2)
        status, body = call("POST", "/predict", nurse, encounters[1])
        assert status == 200 and body["model_version"] == b
        time.sleep(1.0)
        records = list(LocalPredictionLog(log).read())
        shadowed = {r.request_id for r in records if r.source == "shadow"}
        served_by = {r.request_id: r.model_version for r in records if r.source == "api"}
        assert {served_by[r] for r in shadowed} == {a}  # a worker still on A (mid-swap) shadows; none on B does
        assert (
            sum(v == b for v in served_by.values()) >= 5 and not {r for r, v in served_by.items() if v == b} & shadowed
        )
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


@pytest.mark.slow
def test_the_model_tab_shows_no_shadow_model_then_the_shadow_table(
    small_bundle: Path,
    challenger_bundle: Path,
    tmp_path: Path,
    browser: Any,
) -> None:
    registry = Registry.open(tmp_path / "registry")
    a, b = registry.register(small_bundle), registry.register(challenger_bundle)
    registry.promote(a, "champion A")
    server = start_server(tmp_path, tmp_path / "registry", 0.2, "--workers", "1")
    try:
        with open_page(browser, server.url + "/") as tab:
            tab.click("#tab-model")
            assert "No shadow model" in tab.wait_for_selector("#shadow-none").inner_text()
        registry.set_alias(SHADOW, b, "shadow before promotion")
        deadline = time.monotonic() + 60
        while server.call("GET", "/model/shadow")[1]["worker"]["loaded_version"] != b:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for i in range(3):
            assert server.call("POST", "/predict", example(900001 + i))[0] == 200
        while server.call("GET", "/model/shadow")[1]["requests_compared"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with open_page(browser, server.url + "/") as tab:
            tab.click("#tab-model")
            tab.wait_for_selector("#shadow-table")
            assert tab.inner_text("#shadow-version") == b
            rows = {r.query_selector("th").inner_text(): r.query_selector("td").inner_text()
                    for r in tab.query_selector_all("#shadow-table tbody tr")}  # fmt: skip
            assert rows["Requests compared"] == "3" and rows["Risk tier agreement"].endswith("%")
            assert len(tab.query_selector_all("#shadow-tiers tbody tr")) == 3
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)
