"""Planted defects: each known defect, applied alone to a scratch copy, must
make the tests that guard its promise fail (`make mutants`; issue #19).

For every defect below (one exact text edit in one file, whose old text must
occur exactly once): copy the tracked files (`git ls-files`) into a fresh
temporary directory, link the venv, apply the edit there and run the named
tests with pytest. A defect is caught when pytest reports failed tests (exit
code 1); it survived when they pass. The working tree is never modified.

First, every defect's edit is checked against the current code (an edit whose
old text is missing, or occurs more than once, is "patch did not apply": the
code moved, and the defect must be rewritten, not counted as caught), and the
union of the named tests is run once on an unmodified scratch copy: they must
pass, or a "catch" would prove nothing.

Exit status 0 only when the baseline passed and every defect applied and was
caught. Not collected by pytest (it collects tests/test_*.py only).

    python tests/mutants.py            # all defects
    python tests/mutants.py 2 5        # only defects 2 and 5 (and their baseline)
    python tests/mutants.py --list     # the defects and their tests
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Seconds one pytest run may take before it is killed (its process group).
TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Defect:
    name: str
    path: str
    old: str
    new: str
    tests: Tuple[str, ...]


DEFECTS: Tuple[Defect, ...] = (
    Defect(
        "a pack mixes two pack keys",
        "transforms/process.py",
        # the bounded route (the streaming one adds .with_output_types to the same Map)
        '| "Key by pack key" >> beam.Map(lambda r: (r.pack_key, r))\n'
        '                     | "Group by pack key"',
        '| "Key by pack key" >> beam.Map(lambda r: ("", r))\n'
        '                     | "Group by pack key"',
        ("tests/test_modes.py::test_faulty_pack_answers_lose_nothing_and_bill_nothing_twice[pack_drop_ids-packed]",),
    ),
    Defect(
        "a record dropped on the batch route",
        "transforms/batches/collect.py",
        # the first result of each batch is taken off `pending` and then skipped
        '        for entry in self._results(submitted.batch_id):\n'
        '            request = pending.pop(entry["custom_id"], None)\n'
        '            if request is None:\n',
        '        for n, entry in enumerate(self._results(submitted.batch_id)):\n'
        '            request = pending.pop(entry["custom_id"], None)\n'
        '            if request is None or n == 0:\n',
        ("tests/test_pipeline_batch.py::test_sample_job_one_in_one_out_with_provenance",),
    ),
    Defect(
        "a record written twice (a re-asked pack's first row, Messages route)",
        "transforms/messages.py",
        "            rows += more_rows\n",
        "            rows += more_rows + more_rows[:1]\n",
        ("tests/test_modes.py::test_faulty_pack_answers_lose_nothing_and_bill_nothing_twice[pack_drop_ids-packed]",),
    ),
    Defect(
        "a batch created twice on rerun (ledger lookup ignored)",
        "transforms/batches/lifecycle.py",
        "    entry, mine = ledger.reserve(key, run_id, len(requests), extra=extra)\n"
        "    waited = 0.0\n",
        "    entry, mine = ledger.reserve(key, run_id, len(requests), extra=extra)\n"
        "    mine = True\n"
        "    waited = 0.0\n",
        ("tests/test_lifecycle.py::test_rerun_reuses_batches_and_pays_nothing_twice[batch]",),
    ),
    Defect(
        "the API key written into a log line",
        "transforms/api/client.py",
        "    import anthropic\n\n    return anthropic.Anthropic(\n",
        "    import anthropic\n    import logging\n\n"
        "    logging.getLogger(__name__).warning(\"new client, key %s\", settings.api_key())\n"
        "    return anthropic.Anthropic(\n",
        ("tests/test_secrets.py::test_local_run_with_env_key_leaks_nothing[sync]",),
    ),
    Defect(
        "the budget check skipped (Messages route)",
        "transforms/messages.py",
        "        if budget is not None and not budget.reserve(worst):\n",
        "        if False and budget is not None and not budget.reserve(worst):\n",
        ("tests/test_budget.py::test_run_stops_at_the_cap_with_nothing_lost[sync-0.02]",),
    ),
    Defect(
        "a re-ask resends records that already succeeded",
        "transforms/prompts/outcomes.py",
        "answers.reask_plan(list(failures), request.attempt, max_reasks)",
        "answers.reask_plan(list(outcome.expected), request.attempt, max_reasks)",
        ("tests/test_modes.py::test_faulty_pack_answers_lose_nothing_and_bill_nothing_twice"
         "[pack_drop_ids-packed-batch]",),
    ),
    Defect(
        "a pack answer matched by position instead of by id",
        "transforms/prompts/answers.py",
        "    for obj in objects:\n        key = _answer_key(obj)\n",
        "    for position, obj in enumerate(objects, start=1):\n"
        "        key = position if _answer_key(obj) is not None else None\n",
        ("tests/test_answers.py::test_pack_answers",
         "tests/test_answers.py::test_keys_follow_the_order_the_pack_was_rendered_in"),
    ),
)


# ---------------------------------------------------------------------------


def tracked_files() -> List[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [p for p in out.decode("utf-8").split("\0") if p]


def scratch_copy(files: Sequence[str]) -> str:
    """A fresh temporary copy of the tracked files, with the venv linked in."""
    scratch = tempfile.mkdtemp(prefix=f"mutants-{os.getpid()}-")
    for rel in files:
        src = os.path.join(ROOT, rel)
        if not os.path.lexists(src):  # deleted in the working tree, not yet committed
            continue
        dst = os.path.join(scratch, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    venv = os.path.join(ROOT, ".venv")
    if os.path.exists(venv):
        os.symlink(os.path.realpath(venv), os.path.join(scratch, ".venv"))
    return scratch


def applies(defect: Defect) -> Optional[str]:
    """None when the defect's old text occurs exactly once in the working tree's file; else why not."""
    path = os.path.join(ROOT, defect.path)
    if not os.path.exists(path):
        return f"{defect.path} does not exist"
    count = open(path, encoding="utf-8").read().count(defect.old)
    if count != 1:
        return f"old text found {count} times in {defect.path} (want exactly 1)"
    return None


def plant(scratch: str, defect: Defect) -> Optional[str]:
    """Apply the defect in the scratch copy; None, or why it could not be applied."""
    path = os.path.join(scratch, defect.path)
    text = open(path, encoding="utf-8").read()
    if text.count(defect.old) != 1:
        return f"old text found {text.count(defect.old)} times"
    text = text.replace(defect.old, defect.new)
    try:
        compile(text, path, "exec")
    except SyntaxError as e:
        return f"the edited file does not compile: {e}"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return None


def python() -> str:
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    return venv_python if os.path.exists(venv_python) else sys.executable


def run_tests(scratch: str, tests: Sequence[str],
              stop_first: bool) -> Tuple[Optional[int], List[Tuple[str, str]], str]:
    """(pytest's exit code or None on timeout, [(failed test id, why)], output) of `tests` in `scratch`."""
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "PYTHONPATH")}
    env["PYTHONPATH"] = scratch  # the scratch copy's code, whatever the caller's path says
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["COLUMNS"] = "400"  # room for each failure's message in the short summary
    cmd = [os.path.join(scratch, ".venv", "bin", "python") if os.path.exists(os.path.join(scratch, ".venv"))
           else python(), "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider"]
    cmd += ["-x"] if stop_first else []
    cmd += list(tests)
    proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
        code: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    # "FAILED tests/x.py::test[an id] - AssertionError: ...": the id, and the first words of why
    # (only in pytest's short summary: captured logs have "ERROR ..." lines too)
    summary = out.rpartition("short test summary info")[2]
    failed = [(m.group(2), (m.group(3) or "").strip())
              for m in re.finditer(r"^(FAILED|ERROR) (.+?)(?: - (.*))?$", summary, re.MULTILINE)]
    return code, failed, out


def short(test_id: str) -> str:
    return test_id.replace("tests/", "", 1)


def clip(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def table(rows: Sequence[Tuple[str, str, str, str]]) -> str:
    header = ("#", "defect", "test(s) that caught it (or were run)", "caught")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", type=int, help="defect numbers to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the defects and their tests")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies (paths printed)")
    args = parser.parse_args(argv)
    chosen = [(n, d) for n, d in enumerate(DEFECTS, start=1) if not args.only or n in args.only]
    if args.list:
        for n, d in chosen:
            print(f"{n}. {d.name} ({d.path})\n   " + "\n   ".join(map(short, d.tests)))
        return 0
    if not chosen:
        parser.error("no such defect")

    files = tracked_files()
    problems = {n: applies(d) for n, d in chosen}
    started = time.monotonic()
    scratches = []

    # The guarding tests must pass on the unmodified code first.
    baseline = list(dict.fromkeys(t for n, d in chosen if problems[n] is None for t in d.tests))
    baseline_ok = True
    if baseline:
        scratch = scratch_copy(files)
        scratches.append(scratch)
        print(f"baseline: {len(baseline)} test ids on an unmodified copy ...", flush=True)
        code, failed, out = run_tests(scratch, baseline, stop_first=False)
        baseline_ok = code == 0
        if not baseline_ok:
            print(out[-6000:])
            why = "timed out" if code is None else f"pytest exit {code}"
            print(f"BASELINE FAILED ({why}): {', '.join(short(t) for t, _ in failed) or 'see output above'}")
            print("a defect 'caught' by a failing test proves nothing: fix the tests first")

    rows = []
    whys = []
    for n, d in chosen:
        tests = ", ".join(map(short, d.tests))
        if problems[n] is not None:
            rows.append((str(n), d.name, tests, f"NO: patch did not apply ({problems[n]})"))
            continue
        if not baseline_ok:
            rows.append((str(n), d.name, tests, "not run (baseline failed)"))
            continue
        scratch = scratch_copy(files)
        scratches.append(scratch)
        why = plant(scratch, d)
        if why is not None:
            rows.append((str(n), d.name, tests, f"NO: patch did not apply ({why})"))
            continue
        t0 = time.monotonic()
        print(f"defect {n}: {d.name} ...", flush=True)
        code, failed, out = run_tests(scratch, d.tests, stop_first=True)
        took = f"{time.monotonic() - t0:.0f}s"
        if code == 1 and failed:
            rows.append((str(n), d.name, ", ".join(short(t) for t, _ in failed), f"yes ({took})"))
            # the failing line (pytest marks it with ">"; the innermost one, in a helper if it is one)
            lines = re.findall(r"^>\s+(.*\S)", out.rpartition("short test summary info")[0], re.MULTILINE)
            where = f" (at: {lines[-1].strip()})" if lines else ""
            whys.append(f"{n}. {d.path}: {clip(failed[0][1], 80)}{clip(where, 90)}")
        elif code is None:
            # pytest-timeout would fail it in CI too, but a hang is not the promise's own check
            rows.append((str(n), d.name, tests, f"NO: timed out after {TIMEOUT_S}s"))
        elif code == 0:
            rows.append((str(n), d.name, tests, f"NO: SURVIVED, the tests passed ({took})"))
        else:
            print(out[-4000:])
            rows.append((str(n), d.name, tests, f"NO: pytest exit {code}, not a test failure ({took})"))

    print()
    print(table(rows))
    if whys:
        print("\nHow each was caught (the first failure's message):")
        print("\n".join(whys))
    caught = sum(r[3].startswith("yes") for r in rows)
    print(f"\n{caught}/{len(rows)} defects caught; baseline {'passed' if baseline_ok else 'FAILED'}; "
          f"{time.monotonic() - started:.0f}s")
    if args.keep:
        print("scratch copies kept:", *scratches, sep="\n  ")
    else:
        for scratch in scratches:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0 if baseline_ok and caught == len(rows) else 1


def _main_cleaning_up() -> int:
    """main(), removing the scratch copies even when it fails (unless --keep)."""
    try:
        return main()
    finally:
        if "--keep" not in sys.argv:
            for scratch in glob.glob(os.path.join(tempfile.gettempdir(), f"mutants-{os.getpid()}-*")):
                shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(_main_cleaning_up())
