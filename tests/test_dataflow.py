"""The job is deployable on Dataflow: built offline with `DataflowRunner --dry_run=True`.

A dry run goes through everything the DataflowRunner does before it talks to
the service: runner overrides, the runner-API graph, the Docker environment,
staging of `--setup_file` (a real `setup.py sdist`), the job request. Nothing is
submitted and no credentials are needed. The result's `.job` is the
`apiclient.Job` the runner would send; we fill in its `environment` the way
`create_job_description` would (minus the upload), so tests see the whole
request, pipeline options included.

Step names are compared with checked-in snapshots (tests/snapshots/steps_<mode>.txt):
Dataflow needs stable step names to update a running job, and a renamed step
should be a decision, not an accident. Regenerate after an intended change with

    UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_dataflow.py
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from typing import List

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient

from pipeline.build import build, resolve_job
from pipeline.options import ClaudeOptions, help_parser, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOTS = os.path.join(ROOT, "tests", "snapshots")
TASK = os.path.join(ROOT, "samples", "sentiment.yaml")
MODES = ("sync", "packed", "batch", "packed-batch")
#: What every dry run is given: a made-up project, region and bucket.
DATAFLOW_ARGS = ["--runner", "DataflowRunner", "--dry_run=True", "--project", "test-project",
                 "--region", "us-central1", "--temp_location", "gs://test-bucket/tmp"]
INPUT = "gs://test-bucket/in/*.jsonl"
OUTPUT = "gs://test-bucket/out/nightly"
SUBSCRIPTION = "projects/test-project/subscriptions/claude-in"


@dataclasses.dataclass
class DryRun:
    """What a dry run produced: the job request and the graph inside it."""

    request: dict                                   # the Dataflow Job, as JSON
    pipeline: beam_runner_api_pb2.Pipeline          # the runner-API graph
    options: PipelineOptions

    @property
    def artifacts(self) -> dict:
        """staged name -> local path of every file the job would upload."""
        staged = {}
        for env in self.pipeline.components.environments.values():
            for dep in env.dependencies:
                path = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
                name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name
                staged[name] = path
        return staged


def dry_run(mode: str = "batch", *extra: str, input_pattern: str = INPUT) -> DryRun:
    """Builds the job for Dataflow without submitting it.

    Calls resolve_job + build directly: pipeline.run.run() would first check
    that the gs:// input exists, which needs credentials."""
    argv = [*DATAFLOW_ARGS, "--task", TASK, "--output", OUTPUT, "--mode", mode,
            "--pack-key-field", "customer_id", *extra]
    if input_pattern:
        argv += ["--input", input_pattern]
    options = PipelineOptions(argv)
    opts = options.view_as(ClaudeOptions)
    validate(opts)
    job = resolve_job(opts, opts.api_base, local=False)
    p = beam.Pipeline(options=options)
    build(p, job)
    result = p.run()
    assert result.state == beam.runners.runner.PipelineState.DONE  # a dry run "finishes" at once
    request = result.job
    assert isinstance(request, apiclient.Job)
    staging = request.google_cloud_options.staging_location
    request.proto.environment = apiclient.Environment(
        packages=[], options=request.options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url=f"{staging}/pipeline.pb",
        proto_pipeline=request.proto_pipeline).proto
    return DryRun(request=json.loads(request.json()), pipeline=request.proto_pipeline,
                  options=request.options)


def step_lines(pipeline: beam_runner_api_pb2.Pipeline) -> List[str]:
    """Every transform of the graph, depth first, indented by nesting: `name  [urn]`."""
    transforms = pipeline.components.transforms
    lines: List[str] = []

    def walk(transform_id: str, depth: int) -> None:
        t = transforms[transform_id]
        lines.append(f"{'  ' * depth}{t.unique_name}  [{t.spec.urn or 'composite'}]")
        for sub in t.subtransforms:
            walk(sub, depth + 1)

    for root in pipeline.root_transform_ids:
        t = transforms[root]
        if not t.spec.urn and t.unique_name.startswith("ref_"):  # the pipeline's own (unnamed) root
            for sub in t.subtransforms:
                walk(sub, 0)
        else:
            walk(root, 0)
    return lines


def check_snapshot(name: str, lines: List[str]) -> None:
    path = os.path.join(SNAPSHOTS, name)
    text = "\n".join(lines) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        os.makedirs(SNAPSHOTS, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    if not os.path.exists(path):
        pytest.fail(f"no snapshot {path}; create it with UPDATE_SNAPSHOTS=1")
    with open(path, encoding="utf-8") as f:
        expected = f.read()
    if expected != text:
        import difflib
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"snapshot {name}", "this build"))
        pytest.fail(f"the Dataflow steps changed (renamed steps break `--update` of a running job).\n"
                    f"If intended, regenerate with UPDATE_SNAPSHOTS=1.\n{diff}")


def _dests_of_our_flags() -> set:
    return {a.dest for a in help_parser()._actions if a.dest != "help"}


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def dry_runs():
    """One dry run per mode, shared by the tests of this module (about 1 s each)."""
    return {mode: dry_run(mode) for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_builds_a_dataflow_batch_job(dry_runs, mode):
    run = dry_runs[mode]
    assert run.request["type"] == "JOB_TYPE_BATCH"
    env = run.request["environment"]
    options = env["sdkPipelineOptions"]["options"]
    assert options["project"] == "test-project" and options["region"] == "us-central1"
    assert options["mode"] == mode
    assert "test-bucket/tmp" in env["tempStoragePrefix"]
    # Dataflow runs Docker environments only, and the graph has exactly one
    environments = run.pipeline.components.environments
    assert {e.urn for e in environments.values()} == {"beam:env:docker:v1"}
    names = {t.unique_name for t in run.pipeline.components.transforms.values()}
    assert {"Read records", "Process with Claude", "Write results", "Write dead letters"} <= names
    # both sinks are in the job: the dead letter is never an afterthought
    assert any(n.startswith("Write dead letters/") for n in names)


@pytest.mark.parametrize("mode", MODES)
def test_step_names_match_the_snapshot(dry_runs, mode):
    check_snapshot(f"steps_{mode}.txt", step_lines(dry_runs[mode].pipeline))


@pytest.mark.parametrize("mode", ["sync", "packed"])
def test_shed_to_batch_adds_the_batch_route_to_the_messages_modes(mode):
    """--shed-to batch: the Messages modes' steps, plus the batch route under its own label."""
    lines = step_lines(dry_run(mode, "--shed-to", "batch").pipeline)
    check_snapshot(f"steps_{mode}_shed_batch.txt", lines)
    names = [line.split("  [")[0].strip() for line in lines]
    assert "Process with Claude/Ask Claude/Shed to batches/Submit batches" in names
    with open(os.path.join(SNAPSHOTS, f"steps_{mode}.txt"), encoding="utf-8") as f:
        plain = {line.split("  [")[0].strip() for line in f}
    assert plain <= set(names)  # nothing of the plain graph is renamed


def test_the_options_reach_the_job_by_their_dest_names(dry_runs):
    """Dataflow hands workers the options under their dest names (sdkPipelineOptions)."""
    options = dry_runs["batch"].request["environment"]["sdkPipelineOptions"]["options"]
    assert options["pack_key_field"] == "customer_id"
    assert options["input"] == INPUT and options["output"] == OUTPUT
    assert options["task"] == TASK


def _source_copy(tmp_path) -> str:
    """The packaging inputs, copied: `setup.py sdist` writes *.egg-info next to
    setup.py, and a test must not litter the work tree."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "requirements.txt", "README.md", "MANIFEST.in", "pyproject.toml", "setup.cfg"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), src / name)
    for package in ("pipeline", "transforms", "emulator"):
        shutil.copytree(os.path.join(ROOT, package), src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return str(src / "setup.py")


def test_setup_file_is_built_and_staged_offline(tmp_path):
    """`--setup_file` works with no network: Beam runs `setup.py sdist` locally and
    stages it as workflow.tar.gz, which every worker pip-installs at start-up."""
    setup_py = _source_copy(tmp_path)
    run = dry_run("batch", "--setup_file", setup_py)
    artifacts = run.artifacts
    assert "workflow.tar.gz" in artifacts, artifacts
    with tarfile.open(artifacts["workflow.tar.gz"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    # the package data the workers read at run time
    assert "transforms/data/prices.yaml" in names
    assert "transforms/api/ratelimit/budget.lua" in names, "the sdist lacks the Redis limiter's script: MANIFEST.in"
    for package in ("pipeline", "transforms", "emulator"):
        assert f"{package}/__init__.py" in names
    # setup.py reads requirements.txt: without it in the sdist, `pip install
    # workflow.tar.gz` fails on every worker (FileNotFoundError) -> MANIFEST.in
    assert "requirements.txt" in names, "the sdist lacks requirements.txt: add MANIFEST.in"


# ------------------------------------------------------------------------ streaming

def test_streaming_job_from_pubsub_builds():
    run = dry_run("batch", "--input-subscription", SUBSCRIPTION, "--streaming", input_pattern="")
    assert run.request["type"] == "JOB_TYPE_STREAMING"
    names = {t.unique_name for t in run.pipeline.components.transforms.values()}
    assert {"Process with Claude", "Write results", "Write dead letters"} <= {n.split("/")[0] for n in names}
    check_snapshot("steps_streaming.txt", step_lines(run.pipeline))


# ---------------------------------------------------------------- Flex Template

DEPLOY = os.path.join(ROOT, "deploy")
#: A value the Flex launcher could pass for each string parameter (checked
#: against the metadata's regexes, then parsed by the real options parser).
SAMPLES = {
    "task": "gs://my-bucket/tasks/sentiment.yaml", "input": "gs://my-bucket/in/*.jsonl",
    "output": "gs://my-bucket/out/{run_date}", "ledger": "gs://my-bucket/ledger/{run_date}",
    "prices": "gs://my-bucket/prices.yaml", "run_date": "2026-11-25", "run_id": "nightly-2026-11-25",
    "injection_patterns": "gs://my-bucket/injection_patterns.yaml",
    "deadline": "2026-11-26T09:00:00Z", "max_cost_usd": "25.5", "plan_sample": "500", "plan_sampling": "first",
    "plan_pilot": "0", "plan_count_calls": "10", "plan_batch_typical_s": "1800",
    "api_key_secret": "projects/my-project/secrets/anthropic-api-key/versions/3",
    "api_base": "https://llm-gateway.example.com", "rate_limit_redis": "redis://redis.internal:6379/0",
    "model": "claude-haiku-4-5", "id_field": "email_id", "text_field": "body",
    "pack_key_field": "customer_id", "input_subscription": "projects/my-project/subscriptions/claude-in",
    "input_topic": "projects/my-project/topics/claude-in", "output_topic": "projects/my-project/topics/claude-out",
    "dead_letter_topic": "projects/my-project/topics/claude-dead", "id_attribute": "record_id",
    "urgent_field": "priority",
}


def _metadata():
    with open(os.path.join(DEPLOY, "metadata.json"), encoding="utf-8") as f:
        return json.load(f)


def _our_actions():
    import argparse
    return [a for a in help_parser()._actions if a.dest != "help" and a.help != argparse.SUPPRESS]


def _sample(action):
    """(text the launcher passes, value the parser must produce)."""
    import argparse
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.type is bool:
        flipped = not action.default
        return ("true" if flipped else "false"), flipped
    from pipeline.options import _flag_value
    if action.type is _flag_value:  # a valued boolean (--overwrite=true, --allow-partial-budget=true)
        return "true", True
    if action.choices:
        choice = [c for c in action.choices if c != action.default][-1]
        return str(choice), choice
    if action.type is int:
        return "7", 7
    if action.type is float:
        return "2.5", 2.5
    assert action.dest in SAMPLES, f"add a sample value for --{action.dest} to SAMPLES"
    return SAMPLES[action.dest], SAMPLES[action.dest]


def test_flex_metadata_documents_every_flag_and_nothing_else():
    params = _metadata()["parameters"]
    names = [p["name"] for p in params]
    assert len(names) == len(set(names)), "a parameter is listed twice"
    dests = {a.dest for a in _our_actions()}
    assert not dests - set(names), f"flags missing from deploy/metadata.json: {sorted(dests - set(names))} " \
                                   "(run .venv/bin/python deploy/make_metadata.py)"
    assert not set(names) - dests, f"deploy/metadata.json lists flags that do not exist: " \
                                   f"{sorted(set(names) - dests)}"
    for p in params:
        assert p["label"].strip() and p["helpText"].strip(), p["name"]
        assert p["isOptional"] is (p["name"] not in ("task", "output")), p["name"]
        assert re.fullmatch(r"[a-z][a-z0-9_]*", p["name"]), p["name"]


def test_flex_metadata_is_up_to_date_with_the_help_texts():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_metadata", os.path.join(DEPLOY, "make_metadata.py"))
    make_metadata = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_metadata)
    metadata = _metadata()
    assert make_metadata.build(metadata) == metadata, \
        "deploy/metadata.json is out of date: run .venv/bin/python deploy/make_metadata.py"


def test_flex_metadata_regexes_accept_real_values_and_match_the_choices():
    actions = {a.dest: a for a in _our_actions()}
    for p in _metadata()["parameters"]:
        action = actions[p["name"]]
        text, _ = _sample(action)
        for regex in p.get("regexes", []):
            assert re.fullmatch(regex, text), (p["name"], regex, text)
            assert not re.fullmatch(regex, "no such value!"), (p["name"], regex)
        if action.choices:
            for choice in action.choices:
                assert all(re.fullmatch(r, str(choice)) for r in p["regexes"]), (p["name"], choice)


def test_the_launchers_dest_spellings_are_accepted():
    """The Flex Template launcher passes --input_format=csv, --prompt_cache=false (docs/deploy.md)."""
    parsed = PipelineOptions(["--input_format=csv", "--prompt_cache=false"]).view_as(ClaudeOptions)
    assert parsed.input_format == "csv" and parsed.prompt_cache is False


def test_every_flex_parameter_reaches_the_job_as_the_launcher_passes_it():
    """The launcher runs `main.py --<name>=<value>` for each parameter given."""
    actions = {a.dest: a for a in _our_actions()}
    wrong = []
    for p in _metadata()["parameters"]:
        text, expected = _sample(actions[p["name"]])
        parsed = PipelineOptions([f"--{p['name']}={text}"]).view_as(ClaudeOptions)
        if getattr(parsed, p["name"]) != expected:
            wrong.append((p["name"], text, getattr(parsed, p["name"])))
    assert not wrong, f"--name=value not understood: {wrong}"


def _dockerfile():
    with open(os.path.join(DEPLOY, "Dockerfile"), encoding="utf-8") as f:
        lines = [line.strip() for line in f.read().replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerfile_is_a_flex_launcher_with_our_pinned_package():
    lines = _dockerfile()
    assert lines[0] == "FROM gcr.io/dataflow-templates-base/python311-template-launcher-base"
    copies = [line.split()[1:] for line in lines if line.startswith("COPY ")]
    for args in copies:
        for source in args[:-1]:
            assert os.path.exists(os.path.join(ROOT, source)), \
                f"deploy/Dockerfile copies {source}, which the build context (repo root) lacks"
    env = dict(re.findall(r'ENV (\w+)="?([^"\s]+)"?', "\n".join(lines)))
    workdir = "/template"
    copied = {os.path.normpath(os.path.join(workdir, args[-1])) if not args[-1].endswith("/")
              else os.path.join(workdir, os.path.basename(args[0])) for args in copies}
    for var in ("FLEX_TEMPLATE_PYTHON_PY_FILE", "FLEX_TEMPLATE_PYTHON_SETUP_FILE"):
        path = env[var].replace("${WORKDIR}", workdir)
        assert path in copied, (var, path, copied)
    assert any("pip install" in line and "-r requirements.txt" in line for line in lines)
    assert lines[-1] == 'ENTRYPOINT ["/opt/google/dataflow/python_template_launcher"]'
    # Python 3.11 in the launcher means 3.11 workers: the dev Python must match (pickles)
    assert sys.version_info[:2] == (3, 11)


def test_flex_entry_point_is_the_cli():
    import ast
    with open(os.path.join(DEPLOY, "main.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imports = [(n.module, [a.name for a in n.names]) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert ("pipeline.run", ["main"]) in imports
    # the launcher must not wait for the job: Beam's own flag says so
    assert "--no_wait_until_finish" in ast.unparse(tree)
    assert PipelineOptions(["--no_wait_until_finish"]).get_all_options()["no_wait_until_finish"] is True


def test_cloudbuild_builds_the_deploy_dockerfile():
    import yaml
    with open(os.path.join(DEPLOY, "cloudbuild.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    args = config["steps"][0]["args"]
    assert args[:3] == ["build", "-f", "deploy/Dockerfile"] and args[-1] == "."
    assert config["images"] == ["${_IMAGE}"]


# ------------------------------------------------------------------ schedulers

DAG_FILE = os.path.join(DEPLOY, "airflow_dag.py")
AIRFLOW_VERSION = "3.3.2"


class _StubDAG:
    current = None

    def __init__(self, dag_id, **kwargs):
        self.dag_id, self.kwargs, self.tasks = dag_id, kwargs, {}

    def __enter__(self):
        _StubDAG.current = self
        return self

    def __exit__(self, *exc):
        _StubDAG.current = None


class _StubTask:
    def __init__(self, task_id, **kwargs):
        self.task_id, self.kwargs, self.downstream = task_id, kwargs, set()
        _StubDAG.current.tasks[task_id] = self

    def __rshift__(self, other):
        self.downstream.add(other.task_id)
        return other


class _StubPythonOperator(_StubTask):
    pass


class _StubPythonSensor(_StubTask):
    pass


class _StubFail(Exception):
    """Stands for AirflowFailException (fail without retry)."""


@pytest.fixture
def dag_module(monkeypatch):
    """deploy/airflow_dag.py imported against a minimal stand-in for Airflow 3's API
    (the real Airflow check is test_dag_loads_in_real_airflow, marked slow)."""
    import importlib.util
    import types

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    module("airflow")
    module("airflow.sdk", DAG=_StubDAG)
    module("airflow.sdk.exceptions", AirflowFailException=_StubFail)
    for name in ("airflow.providers", "airflow.providers.standard", "airflow.providers.standard.operators",
                 "airflow.providers.standard.sensors"):
        module(name)
    module("airflow.providers.standard.operators.python", PythonOperator=_StubPythonOperator)
    module("airflow.providers.standard.sensors.python", PythonSensor=_StubPythonSensor)
    spec = importlib.util.spec_from_file_location("claude_beam_dag_under_test", DAG_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dag_file_imports_nothing_of_the_pipeline():
    """Airflow parses DAG files every few seconds, on machines without Beam."""
    import ast
    with open(DAG_FILE, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    heavy = {m for m in modules if m.split(".")[0] in ("apache_beam", "pipeline", "transforms", "emulator",
                                                       "anthropic", "pyarrow", "google")}
    assert not heavy, heavy


def test_dag_is_submit_then_a_rescheduling_collect_sensor(dag_module):
    dag = dag_module.dag
    assert dag.dag_id == "claude_beam_nightly"
    assert dag.kwargs["catchup"] is False and dag.kwargs["max_active_runs"] == 1
    assert set(dag.tasks) == {"submit", "collect"}
    submit, collect = dag.tasks["submit"], dag.tasks["collect"]
    assert isinstance(submit, _StubPythonOperator) and isinstance(collect, _StubPythonSensor)
    assert submit.downstream == {"collect"}
    assert collect.kwargs["mode"] == "reschedule"          # no worker slot held while batches run
    assert collect.kwargs["timeout"] >= 24 * 3600          # a batch may take 24 h
    assert collect.kwargs["poke_interval"] >= 60


def test_dag_exit_codes_are_the_clis(dag_module):
    from pipeline import run as cli
    for name in ("EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_PENDING", "EXIT_ABORTED"):
        assert getattr(dag_module, name) == getattr(cli, name), name


@pytest.mark.parametrize("stage", ["submit", "collect"])
def test_dag_commands_are_valid_invocations_of_the_cli(dag_module, stage):
    cmd = dag_module.build_command(stage, "2026-11-25")
    assert cmd[1:3] == ["-m", "pipeline"]
    args = cmd[3:]
    options = PipelineOptions(args)
    opts = options.view_as(ClaudeOptions)
    validate(opts)
    assert opts.lifecycle == stage and opts.run_date == "2026-11-25"
    assert opts.api_key_secret and not any("sk-ant" in a for a in args)  # a secret's name, never a key
    known = options.get_all_options()
    every = options.get_all_options(retain_unknown_options=True)
    assert set(every) == set(known), f"flags neither we nor Beam know: {set(every) - set(known)}"
    assert known["runner"] == "DataflowRunner"
    assert "{run_date}" in opts.output and "{run_date}" in opts.ledger  # one folder per night


def _fake_cli(tmp_path):
    """An executable that records its arguments and exits with $FAKE_EXIT."""
    script = tmp_path / "fake-python"
    script.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$FAKE_ARGS"\nexit "$FAKE_EXIT"\n')
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("code, collect_returns", [(0, True), (75, False), (1, RuntimeError), (2, _StubFail), (3, _StubFail),
                                                   (130, RuntimeError)])
def test_dag_turns_exit_codes_into_airflow_outcomes(dag_module, tmp_path, monkeypatch, code, collect_returns):
    monkeypatch.setattr(dag_module, "PYTHON", _fake_cli(tmp_path))
    monkeypatch.setenv("FAKE_EXIT", str(code))
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "args"))
    if isinstance(collect_returns, bool):
        assert dag_module.collect(ds="2026-11-25") is collect_returns
    else:
        with pytest.raises(collect_returns):
            dag_module.collect(ds="2026-11-25")
    args = (tmp_path / "args").read_text().split("\n")
    assert args[args.index("--lifecycle") + 1] == "collect"
    assert args[args.index("--run-date") + 1] == "2026-11-25"
    # submit: only 0 is success (75 from submit would be a bug: it never waits on batches)
    if code == 0:
        assert dag_module.submit(ds="2026-11-25") is None
    else:
        with pytest.raises(_StubFail if code in (2, 3) else RuntimeError):
            dag_module.submit(ds="2026-11-25")


def test_dag_drives_the_real_cli_through_submit_pending_and_collect(dag_module, emu, tmp_path, monkeypatch):
    """The DAG's own callables run `python -m pipeline` for real (DirectRunner)
    against the emulator: submit, collect too early (75 -> poke again), collect."""
    import time

    from bench import datagen
    from tests.conftest import assert_one_in_one_out, read_output

    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 60, seed=5, customers=4)
    job = dict(dag_module.JOB)
    job.pop("--api-key-secret")  # no Secret Manager here: the key comes from the environment
    job.update({"--task": TASK, "--input": str(data), "--output": str(tmp_path / "out" / "{run_date}"),
                "--ledger": str(tmp_path / "ledger" / "{run_date}")})
    monkeypatch.setattr(dag_module, "JOB", job)
    monkeypatch.setattr(dag_module, "PYTHON", sys.executable)
    monkeypatch.setattr(dag_module, "RUNNER_ARGS", ["--runner", "DirectRunner"])
    monkeypatch.setattr(dag_module, "EXTRA_ARGS", ["--api-base", emu.base_url, "--poll-interval-s", "0.05",
                                                   "--poll-max-interval-s", "0.2"])
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-a-secret")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    emu.reset()
    emu.configure(faults={}, batch_delay_s=20.0)
    try:
        assert dag_module.submit(ds="2026-11-25") is None
        assert emu.stats()["batches_created"] == 1
        assert dag_module.collect(ds="2026-11-25") is False  # still running: the sensor reschedules
        deadline = time.monotonic() + 60
        while emu.stats()["batches_in_progress"]:
            assert time.monotonic() < deadline, "the emulator's batch never ended"
            time.sleep(0.5)
        assert dag_module.collect(ds="2026-11-25") is True
    finally:
        emu.configure(batch_delay_s=0.0)
    out = tmp_path / "out" / "2026-11-25"  # date-partitioned by --run-date
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert json.loads((out / "summary.json").read_text())["one_in_one_out"] is True
    assert emu.stats()["batches_created"] == 1  # nothing paid twice across the three invocations


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dag_loads_in_real_airflow(tmp_path):
    """apache-airflow in a throwaway venv (about 1.5 min to install) parses the DAG."""
    venv = tmp_path / "airflow-venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-compile", f"apache-airflow=={AIRFLOW_VERSION}"],
                   check=True, env=env)
    check = tmp_path / "check.py"
    check.write_text(
        "import json, sys\n"
        "from airflow.models.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=sys.argv[1])\n"
        "dag = bag.dags.get('claude_beam_nightly')  # get_dag() reads the metadata DB in Airflow 3\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "  'tasks': {t.task_id: [type(t).__name__, sorted(t.downstream_task_ids), getattr(t, 'mode', None)]\n"
        "            for t in (dag.tasks if dag else [])}}))\n")
    home = tmp_path / "airflow-home"
    home.mkdir()
    proc = subprocess.run([python, str(check), DAG_FILE], capture_output=True, text=True, cwd=str(tmp_path),
                          env={**env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert report["tasks"] == {"submit": ["PythonOperator", ["collect"], None],
                               "collect": ["PythonSensor", [], "reschedule"]}


SCHEDULER_SCRIPT = os.path.join(DEPLOY, "cloud_scheduler.sh")


def _from_scheduler_script(expression: str) -> str:
    """Sources the script (it stops before any gcloud call) and evaluates `expression`."""
    proc = subprocess.run(["bash", "-c", f'source "{SCHEDULER_SCRIPT}"; {expression}'],
                          capture_output=True, text=True, check=True)
    return proc.stdout


def test_cloud_scheduler_example_is_valid_bash_with_valid_job_flags():
    subprocess.run(["bash", "-n", SCHEDULER_SCRIPT], check=True)
    flags = _from_scheduler_script('printf "%s\\n" "${JOB_FLAGS[@]}"').splitlines()
    for stage in ("submit", "collect"):
        options = PipelineOptions(flags + ["--run-date", "2026-11-25", "--lifecycle", stage])
        opts = options.view_as(ClaudeOptions)
        validate(opts)
        assert opts.lifecycle == stage and opts.api_key_secret
        assert set(options.get_all_options(retain_unknown_options=True)) == set(options.get_all_options())


@pytest.mark.parametrize("cli_exit, job_exit", [(0, 0), (75, 0), (1, 1), (2, 2), (130, 130)])
def test_cloud_run_stage_script_maps_pending_to_success(tmp_path, cli_exit, job_exit):
    """The shell each Cloud Run job runs, with a fake `python` that exits as told."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$FAKE_ARGS"\nexit "$FAKE_EXIT"\n')
    fake.chmod(0o755)
    script = _from_scheduler_script("stage_script collect")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "FAKE_EXIT": str(cli_exit),
           "FAKE_ARGS": str(tmp_path / "args")}
    proc = subprocess.run(["sh", "-c", script, "sh", "--task", "gs://b/t.yaml", "--mode", "batch"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == job_exit, proc.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:6] == ["-m", "pipeline", "--task", "gs://b/t.yaml", "--mode", "batch"]
    assert args[args.index("--lifecycle") + 1] == "collect"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", args[args.index("--run-date") + 1])
