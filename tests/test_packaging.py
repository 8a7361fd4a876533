"""The package installs and runs outside the source tree, the way Dataflow
workers and a Flex Template image get it.

* the wheel (`pip wheel --no-deps .`) holds every module and the package data
  (transforms/data/*.yaml, transforms/api/ratelimit/*.lua) and requires exactly the
  pins of requirements.txt;
* the sdist (what `--setup_file ./setup.py` stages as workflow.tar.gz and every
  worker pip-installs) builds into the same wheel;
* a fresh venv (no --system-site-packages: nothing leaks in from the dev venv)
  with the wheel installed from the package index runs the sample job from a
  directory outside the source tree: exit 0, one row out per row in.

The fresh-venv test downloads the dependencies (about 1-2 minutes): marked
`slow`, and run in CI all the same.
"""
from __future__ import annotations

import email.parser
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import assert_one_in_one_out, read_output
from tests.test_dataflow import _source_copy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "samples", "emails.jsonl")
TASK = os.path.join(ROOT, "samples", "sentiment.yaml")
PACKAGES = ("pipeline", "transforms", "emulator")


def _pins(path: str):
    """Requirement lines of a requirements file, normalized (no comments, no -r)."""
    with open(path, encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith("-")]


def _normalize(requirement: str) -> str:
    """'apache-beam[gcp]==2.77.0' and 'apache-beam[gcp] (==2.77.0)' -> 'apache-beam[gcp]==2.77.0'."""
    req = requirement.split(";", 1)[0].replace(" ", "").replace("(", "").replace(")", "")
    name, _, version = req.partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


def _clean_env(**extra):
    """The environment of a user's shell: no dev venv on PATH, no source tree on
    PYTHONPATH, no API key (so --api-base local is the only backend)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                        "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The wheel and the sdist, built from a copy of the tree (builds write
    build/ and *.egg-info next to setup.py)."""
    tmp = tmp_path_factory.mktemp("dist")
    setup_py = _source_copy(tmp)
    src = os.path.dirname(setup_py)
    out = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", src, "-w", str(out)],
                   check=True, cwd=str(tmp), env=_clean_env())
    subprocess.run([sys.executable, "setup.py", "--quiet", "sdist", "--dist-dir", str(out)],
                   check=True, cwd=src, env=_clean_env())
    wheels = glob.glob(str(out / "*.whl"))
    sdists = glob.glob(str(out / "*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, os.listdir(out)
    return {"wheel": wheels[0], "sdist": sdists[0], "tmp": tmp}


def _wheel_files(path: str):
    with zipfile.ZipFile(path) as z:
        return sorted(n for n in z.namelist() if ".dist-info/" not in n)


def _wheel_metadata(path: str):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode("utf-8"))


def test_wheel_holds_every_module_and_the_package_data(dist):
    files = _wheel_files(dist["wheel"])
    for package in PACKAGES:
        on_disk = sorted(os.path.relpath(p, ROOT)
                         for p in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True))
        missing = [p for p in on_disk if p not in files]
        assert not missing, f"modules missing from the wheel: {missing}"
    data = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "transforms", "data", "*.yaml")))
    assert data and all(d in files for d in data), (data, [f for f in files if "data" in f])
    # the Redis limiter's Lua script, read next to its module at import time
    lua = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "transforms", "api", "ratelimit", "*.lua")))
    assert lua and all(f in files for f in lua), (lua, [f for f in files if "ratelimit" in f])
    assert not [f for f in files if f.startswith(("tests/", "bench/", "samples/"))]


def test_install_requires_are_exactly_the_requirements_pins(dist):
    pins = _pins(os.path.join(ROOT, "requirements.txt"))
    assert pins and all("==" in p for p in pins), "every runtime requirement is pinned exactly"
    required = _wheel_metadata(dist["wheel"]).get_all("Requires-Dist") or []
    assert sorted(map(_normalize, required)) == sorted(map(_normalize, pins))
    # the Beam that builds the job is the Beam the workers get
    import apache_beam
    assert f"apache-beam[gcp]=={apache_beam.__version__}" in map(_normalize, pins)
    # the dev requirements add to the runtime pins, never re-pin them differently
    assert "-r requirements.txt" in open(os.path.join(ROOT, "requirements-dev.txt"), encoding="utf-8").read()


def test_sdist_staged_for_dataflow_workers_builds_the_same_wheel(dist, tmp_path):
    """Dataflow workers `pip install workflow.tar.gz` (the sdist of --setup_file):
    it must build, and into the same files as the wheel."""
    out = tmp_path / "from-sdist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", dist["sdist"],
                           "-w", str(out)], cwd=str(tmp_path), env=_clean_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"the sdist does not build (workers could not install it):\n{proc.stderr[-3000:]}"
    rebuilt = glob.glob(str(out / "*.whl"))
    assert len(rebuilt) == 1
    assert _wheel_files(rebuilt[0]) == _wheel_files(dist["wheel"])
    assert sorted(_wheel_metadata(rebuilt[0]).get_all("Requires-Dist") or []) == \
        sorted(_wheel_metadata(dist["wheel"]).get_all("Requires-Dist") or [])


def test_no_build_leftovers_are_committed():
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.splitlines()
    leftovers = [p for p in tracked if re.search(r"(^|/)([^/]+\.egg-info|build|dist|__pycache__)(/|$)", p)]
    assert not leftovers, f"build output is committed: {leftovers[:10]}"
    ignored = open(os.path.join(ROOT, ".gitignore"), encoding="utf-8").read().split()
    assert "*.egg-info/" in ignored or "*.egg-info" in ignored


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fresh_venv_runs_the_sample_job_outside_the_source_tree(dist):
    tmp = dist["tmp"]
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_clean_env())
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-compile", dist["wheel"]], check=True,
                   cwd=str(tmp), env=_clean_env())
    workdir = tmp / "elsewhere"
    workdir.mkdir()
    env = _clean_env()
    # the installed package is what runs, not the source tree
    where = subprocess.run([python, "-c", "import pipeline, transforms, emulator, json;"
                            "print(json.dumps([m.__file__ for m in (pipeline, transforms, emulator)]))"],
                           cwd=str(workdir), env=env, check=True, capture_output=True, text=True)
    for path in json.loads(where.stdout):
        assert "site-packages" in path and not path.startswith(ROOT), path
    helped = subprocess.run([python, "-m", "pipeline", "--help"], cwd=str(workdir), env=env,
                            capture_output=True, text=True)
    assert helped.returncode == 0 and "--pack-key-field" in helped.stdout

    out = workdir / "out"
    proc = subprocess.run([python, "-m", "pipeline", "--task", TASK, "--input", SAMPLE, "--output", str(out),
                           "--mode", "batch", "--pack-key-field", "customer_id", "--api-base", "local"],
                          cwd=str(workdir), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "one in, one out yes" in proc.stdout
    results, dead = read_output(str(out))
    assert_one_in_one_out(SAMPLE, results, dead)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["one_in_one_out"] is True and summary["results"] == len(results) > 0
