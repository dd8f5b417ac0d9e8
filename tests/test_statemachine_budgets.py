"""Time budgets of every Task in statemachines/ (issue #14 item 10): each attempt outlasts the Lambda invocation it
waits for, and all attempts and retry waits fit inside the execution that runs them.

The rules, and why:

- A Lambda task's TimeoutSeconds ≥ the function's Timeout (template.yaml) + 10 s. When TimeoutSeconds elapses,
  Step Functions fails the attempt with States.Timeout but does not stop the invocation, which runs on to the
  function's own Timeout; a retry then runs beside it (two scorings of one batch, two evaluations registering two
  versions), and in an EXPRESS child the invocation outlives the execution that wanted its result. A synchronous
  invoke can last the Timeout plus a failed Init phase: "The Init phase is limited to 10 seconds. If all three
  tasks do not complete within 10 seconds, Lambda retries the Init phase at the time of the first function
  invocation with the configured function timeout"
  (https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html).
- A task's worst case is (1 + Σ MaxAttempts) × TimeoutSeconds + Σ retry waits. Each retrier counts its own
  attempts ("it already reached its maximum of two retries (MaxAttempts) for that particular error",
  https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html), so an attempt per retrier
  can fail in turn; any attempt may run to its timeout. The n-th wait of a retrier is IntervalSeconds ×
  BackoffRate^(n-1), capped by MaxDelaySeconds; JitterStrategy FULL only shortens it. Omitted fields take the
  ASL defaults: IntervalSeconds 1, MaxAttempts 3, BackoffRate 2.0, and a Task's TimeoutSeconds 99999999
  (https://states-language.net/spec.html).
- The budget is the execution the task runs in: an EXPRESS execution runs at most five minutes, a STANDARD one a
  year (https://docs.aws.amazon.com/step-functions/latest/dg/choosing-workflow-type.html). A Distributed Map's
  children are executions of ItemProcessor.ProcessorConfig.ExecutionType
  (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html). In an EXPRESS execution the
  worst cases of all its tasks must fit together (it has no loop, which the check asserts); in a STANDARD one the
  loops are bounded elsewhere (SageMaker's MaxRuntimeInSeconds), so each task must fit alone.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chalicelib.cli.sam_template import Template

ROOT = Path(__file__).resolve().parent.parent
EXPRESS_MAX_S = 5 * 60
STANDARD_MAX_S = 365 * 24 * 3600
LAMBDA_INIT_S = 10
ASL_DEFAULT_TIMEOUT_S = 99_999_999
PLACEHOLDER = re.compile(r"^\$\{([^}]+)\}$")


@dataclass(frozen=True)
class Task:
    machine: str  # the template's logical id
    path: str  # ScoreBatches/ScoreBatch for a task inside a map
    state: dict[str, Any]
    execution_type: str  # of the execution the task runs in
    execution: str  # which execution: the machine, or the machine's Distributed Map children


def retry_waits(retrier: dict[str, Any]) -> float:
    interval, rate = retrier.get("IntervalSeconds", 1), retrier.get("BackoffRate", 2.0)
    cap = retrier.get("MaxDelaySeconds", float("inf"))
    return sum(min(interval * rate**n, cap) for n in range(retrier.get("MaxAttempts", 3)))


def worst_case_s(task: dict[str, Any]) -> float:
    """Every attempt (the first and each retrier's) running to TimeoutSeconds, plus every retry wait."""
    retriers = task.get("Retry", [])
    attempts = 1 + sum(r.get("MaxAttempts", 3) for r in retriers)
    return attempts * task.get("TimeoutSeconds", ASL_DEFAULT_TIMEOUT_S) + sum(retry_waits(r) for r in retriers)


def tasks(
    machine: str, states: dict[str, Any], execution_type: str, execution: str, prefix: str = ""
) -> Iterator[Task]:
    for name, state in states.items():
        if state["Type"] == "Task":
            yield Task(machine, prefix + name, state, execution_type, execution)
        elif state["Type"] == "Map":
            processor = state.get("ItemProcessor") or state["Iterator"]
            config = processor.get("ProcessorConfig", {})
            if config.get("Mode") == "DISTRIBUTED":  # children are executions of their own type
                child = config.get("ExecutionType", "STANDARD")
                yield from tasks(machine, processor["States"], child, f"{execution}/{name}", f"{prefix}{name}/")
            else:
                yield from tasks(machine, processor["States"], execution_type, execution, f"{prefix}{name}/")
        elif state["Type"] == "Parallel":
            for i, branch in enumerate(state["Branches"]):
                yield from tasks(machine, branch["States"], execution_type, execution, f"{prefix}{name}[{i}]/")


def machine_tasks(template: Template, machine: str, definition: dict[str, Any] | None = None) -> list[Task]:
    """The Tasks of a state machine of template.yaml (its definition as written, placeholders kept)."""
    props = template.resources[machine]["Properties"]
    definition = definition or json.loads((ROOT / props["DefinitionUri"]).read_text())
    return list(tasks(machine, definition["States"], props.get("Type", "STANDARD"), machine))


def function_of(template: Template, task: Task) -> str | None:
    """The template function a Lambda task invokes, through the machine's DefinitionSubstitutions."""
    state = task.state
    if state["Resource"].startswith("arn:aws:states:::lambda:invoke"):
        target = state["Parameters"]["FunctionName"]
    elif state["Resource"].startswith("arn:aws:states:::"):
        return None  # another service (SNS)
    else:
        target = state["Resource"]
    placeholder = PLACEHOLDER.match(target)
    assert placeholder, f"{task.machine} {task.path}: {target} is not a DefinitionSubstitutions placeholder"
    substitutions = template.resources[task.machine]["Properties"]["DefinitionSubstitutions"]
    assert placeholder.group(1) in substitutions, f"{task.machine} {task.path}: {target} is not substituted"
    value = substitutions[placeholder.group(1)]
    assert isinstance(value, dict) and ("GetAtt" in value or "Ref" in value), value
    if "Ref" in value:  # !Ref Function.Alias: SAM's AutoPublishAlias (the canary-deployed alias of that function)
        logical_id, attribute = value["Ref"].split(".", 1)
        assert attribute == "Alias", value
        return logical_id
    logical_id, attribute = value["GetAtt"].split(".", 1)
    assert attribute == "Arn", value
    return logical_id


def timeout_problems(template: Template, found: list[Task]) -> list[str]:
    problems = []
    for task in found:
        function = function_of(template, task)
        if function is None:
            continue
        needed = template.function(function).timeout + LAMBDA_INIT_S
        given = task.state.get("TimeoutSeconds", ASL_DEFAULT_TIMEOUT_S)
        if given < needed:
            problems.append(
                f"{task.machine} {task.path}: TimeoutSeconds {given} < {function}'s Timeout + {LAMBDA_INIT_S} s "
                f"({needed}): Step Functions would abandon a running invocation"
            )
    return problems


def budget_problems(found: list[Task]) -> list[str]:
    problems = []
    executions: dict[str, list[Task]] = {}
    for task in found:
        executions.setdefault(task.execution, []).append(task)
    for execution, members in executions.items():
        kind = members[0].execution_type
        if kind == "EXPRESS":
            total = sum(worst_case_s(t.state) for t in members)
            if total > EXPRESS_MAX_S:
                parts = ", ".join(f"{t.path} {worst_case_s(t.state):g} s" for t in members)
                problems.append(f"{execution} (EXPRESS): {total:g} s > {EXPRESS_MAX_S} s ({parts})")
        else:
            problems += [
                f"{t.machine} {t.path}: {worst_case_s(t.state):g} s > a STANDARD execution's {STANDARD_MAX_S} s"
                for t in members
                if worst_case_s(t.state) > STANDARD_MAX_S
            ]
    return problems


@pytest.fixture(scope="module")
def template() -> Template:
    return Template(ROOT / "template.yaml", region="us-east-1")


def machines(template: Template) -> list[str]:
    return [k for k, v in template.resources.items() if v.get("Type") == "AWS::Serverless::StateMachine"]


# --- the arithmetic --------------------------------------------------------------------------------------------------
def test_the_worst_case_counts_every_retrier_its_backoff_and_its_cap() -> None:
    task = {
        "TimeoutSeconds": 10,
        "Retry": [
            {"ErrorEquals": ["A"], "IntervalSeconds": 2, "BackoffRate": 2, "MaxAttempts": 3},  # waits 2, 4, 8
            {"ErrorEquals": ["B"], "IntervalSeconds": 5, "BackoffRate": 3, "MaxAttempts": 2, "MaxDelaySeconds": 10},
        ],  # waits 5, then 15 capped to 10
    }
    assert worst_case_s(task) == (1 + 3 + 2) * 10 + (2 + 4 + 8) + (5 + 10)


def test_omitted_fields_take_the_asl_defaults() -> None:
    assert worst_case_s({"TimeoutSeconds": 10, "Retry": [{"ErrorEquals": ["A"]}]}) == 4 * 10 + (1 + 2 + 4)
    assert worst_case_s({}) == ASL_DEFAULT_TIMEOUT_S  # no TimeoutSeconds: no budget fits it


# --- the definitions -------------------------------------------------------------------------------------------------
def test_both_state_machines_are_checked_and_the_map_children_are_express_executions(template: Template) -> None:
    assert set(machines(template)) == {"RetrainStateMachine", "BatchScoreStateMachine"}
    found = {t.path: t for m in machines(template) for t in machine_tasks(template, m)}
    batch = found["ScoreBatches/ScoreBatch"]
    assert (batch.execution_type, batch.execution) == ("EXPRESS", "BatchScoreStateMachine/ScoreBatches")
    assert found["Evaluate"].execution_type == "STANDARD"


def test_every_lambda_task_waits_as_long_as_its_function_can_run(template: Template) -> None:
    found = [t for m in machines(template) for t in machine_tasks(template, m)]
    assert sum(function_of(template, t) is not None for t in found) == 9  # 5 retraining and 4 batch Lambda tasks
    assert timeout_problems(template, found) == []


def test_every_task_with_its_retries_fits_the_execution_it_runs_in(template: Template) -> None:
    found = [t for m in machines(template) for t in machine_tasks(template, m)]
    assert budget_problems(found) == []
    for task in found:  # the sum bounds an EXPRESS execution's run only if nothing in it loops or waits
        if task.execution_type == "EXPRESS":
            props = template.resources[task.machine]["Properties"]
            definition = json.loads((ROOT / props["DefinitionUri"]).read_text())
            children = definition["States"][task.execution.rsplit("/", 1)[1]]["ItemProcessor"]["States"]
            assert not any(s["Type"] in ("Wait", "Map", "Parallel", "Choice") for s in children.values())


def test_the_check_catches_the_batch_step_of_issue_14(template: Template) -> None:
    """The definition before the fix: the shared 900 s scoring function behind a 240 s step in an EXPRESS child."""
    props = template.resources["BatchScoreStateMachine"]["Properties"]
    definition = json.loads((ROOT / props["DefinitionUri"]).read_text())
    old = copy.deepcopy(definition)
    step = old["States"]["ScoreBatches"]["ItemProcessor"]["States"]["ScoreBatch"]
    step.update({"Resource": "${BatchScoreFunctionArn}", "TimeoutSeconds": 240})
    found = machine_tasks(template, "BatchScoreStateMachine", old)

    [too_short] = timeout_problems(template, found)
    assert "ScoreBatches/ScoreBatch: TimeoutSeconds 240 < BatchScoreFunction's Timeout + 10 s (910)" in too_short
    [too_long] = budget_problems(found)
    assert too_long.startswith("BatchScoreStateMachine/ScoreBatches (EXPRESS): 1216 s > 300 s")  # 5 × 240 + 16
