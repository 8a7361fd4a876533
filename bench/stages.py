"""Where a DirectRunner run spends its time, stage by stage (a benchmark aid).

  python -m bench.stages [--top N] -- PIPELINE ARGS...

runs `python -m pipeline PIPELINE ARGS` in this process with the FnApiRunner's
bundle execution timed per fused stage, and prints, after the run: when the
first bundle started (imports, graph, translation before it), the wall and CPU
time of each stage, and the run's total. A stage's name lists the steps fused
into it. CPU time is the process's (all threads), so a stage whose CPU exceeds
its wall had a background thread busy too (batch creates).
"""
from __future__ import annotations

import argparse
import collections
import runpy
import sys
import time
from typing import Callable, Dict, List, Tuple

#: Characters of a stage's name printed: fused names run to kilobytes.
_NAME_CHARS = 150


class StageClock:
    """Wall and CPU seconds per stage, from wrapping FnApiRunner._execute_bundle."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time):
        self._clock, self._cpu = clock, cpu
        self.started = clock()
        self.first_bundle: float = 0.0
        self.wall: Dict[str, float] = collections.Counter()
        self.cpu: Dict[str, float] = collections.Counter()
        self.bundles: Dict[str, int] = collections.Counter()

    def wrap(self, execute_bundle):
        def timed(runner, context, manager, bundle_input):
            if not self.first_bundle:
                self.first_bundle = self._clock() - self.started
            wall, cpu = self._clock(), self._cpu()
            try:
                return execute_bundle(runner, context, manager, bundle_input)
            finally:
                name = manager.stage.name
                self.wall[name] += self._clock() - wall
                self.cpu[name] += self._cpu() - cpu
                self.bundles[name] += 1
        return timed

    def rows(self, top: int) -> List[Tuple[str, float, float, int]]:
        ranked = sorted(self.wall, key=self.wall.get, reverse=True)[:top]
        return [(name, self.wall[name], self.cpu[name], self.bundles[name]) for name in ranked]

    def report(self, top: int) -> str:
        total = self._clock() - self.started
        lines = [f"first bundle at {self.first_bundle:.2f} s; bundles {sum(self.wall.values()):.2f} s "
                 f"of {total:.2f} s wall (from this process's start of timing)",
                 f"{'wall s':>7} {'cpu s':>7} {'bundles':>7}  stage"]
        for name, wall, cpu, bundles in self.rows(top):
            lines.append(f"{wall:7.2f} {cpu:7.2f} {bundles:7d}  {name[:_NAME_CHARS]}")
        return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=8, help="stages printed, slowest first")
    parser.add_argument("pipeline_args", nargs=argparse.REMAINDER,
                        help="after --: the arguments of python -m pipeline")
    args = parser.parse_args(argv)
    pipeline_args = args.pipeline_args[1:] if args.pipeline_args[:1] == ["--"] else args.pipeline_args
    clock = StageClock()
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    fn_runner.FnApiRunner._execute_bundle = clock.wrap(fn_runner.FnApiRunner._execute_bundle)
    sys.argv = ["pipeline", *pipeline_args]
    code = 0
    try:
        runpy.run_module("pipeline", run_name="__main__")  # ends in sys.exit(the pipeline's exit code)
    except SystemExit as e:
        code = e.code
    finally:
        sys.stderr.write(clock.report(args.top) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
