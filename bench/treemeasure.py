"""Run a command and measure its whole process tree: CPU seconds and peak RSS.

  python -m bench.treemeasure [--grace-s 30] [--interval-s 0.05] -- CMD ARGS...

This process makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so
any descendant orphaned by its parent is re-parented here instead of to init.
It runs CMD, waits for it, then reaps every remaining descendant (waiting up to
--grace-s for them to exit on their own, then SIGKILLing the stragglers), so
that getrusage(RUSAGE_CHILDREN) covers the CPU of the whole tree: each reaped
process's time includes that of the descendants it reaped itself.

Peak RSS of the tree: a thread sums the resident set (/proc/PID/statm) of every
descendant every --interval-s and keeps the largest sum. Pages shared between
processes count once per process (a plain sum of RSS, not PSS). ru_maxrss, the
largest single process's peak, is reported too. Sampling can miss a short
spike, so both are lower bounds of the tree's true peak: peak_tree_mib is the
larger of the two (the raw sampled figure is peak_tree_sampled_mib).

The last stdout line is JSON: cpu_s (user+sys), user_s, sys_s, peak_tree_mib,
peak_tree_sampled_mib, max_single_mib, wall_s (CMD itself), tree_wall_s (until
the last descendant was reaped), rc, stragglers_killed, samples. CMD's own
stdout and stderr go to a temporary file; on a non-zero exit their tails go to
stderr.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

PR_SET_CHILD_SUBREAPER = 36
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_CHILD_SUBREAPER): " + os.strerror(err))


def _ppids() -> Dict[int, int]:
    """pid -> ppid of every process now visible in /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # the command name (field 2) may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        out[int(name)] = int(fields[1])
    return out


def descendants(root: int) -> List[int]:
    """Every live descendant of `root` (not `root` itself)."""
    children: Dict[int, List[int]] = {}
    for pid, ppid in _ppids().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0  # exited, or a zombie


class _Sampler(threading.Thread):
    def __init__(self, interval_s: float):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        total = sum(_rss_bytes(pid) for pid in descendants(os.getpid()))
        self.peak = max(self.peak, total)
        self.samples += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(cmd: List[str], grace_s: float = 30.0, interval_s: float = 0.05) -> dict:
    _become_subreaper()
    sampler = _Sampler(interval_s)
    started = time.monotonic()
    with tempfile.TemporaryFile() as log:
        # output to a file, not a pipe: nothing blocks on a full pipe, and a
        # grandchild holding the write end open cannot keep us reading
        main = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sampler.start()
        rc = None
        while rc is None:  # reap whatever exits until the main child does
            pid, status = os.waitpid(-1, 0)
            if pid == main.pid:
                rc = os.waitstatus_to_exitcode(status)
        main.returncode = rc  # reaped here, not by Popen
        wall = time.monotonic() - started
        killed = 0
        deadline = time.monotonic() + grace_s
        while True:  # the rest of the tree, orphans included
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                continue
            if time.monotonic() >= deadline:
                for straggler in descendants(os.getpid()):
                    try:
                        os.kill(straggler, signal.SIGKILL)
                        killed += 1
                    except ProcessLookupError:
                        pass
                deadline = float("inf")
            time.sleep(0.02)
        sampler.stop()
        if rc != 0:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 6000))
            sys.stderr.write(log.read().decode(errors="replace"))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampled, single = sampler.peak / 2**20, usage.ru_maxrss / 1024
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "peak_tree_mib": max(sampled, single), "peak_tree_sampled_mib": sampled, "max_single_mib": single,
            "wall_s": wall, "tree_wall_s": time.monotonic() - started, "rc": rc,
            "stragglers_killed": killed, "samples": sampler.samples}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.treemeasure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grace-s", type=float, default=30.0,
                        help="how long the rest of the tree may outlive the command before it is killed")
    parser.add_argument("--interval-s", type=float, default=0.05, help="RSS sampling interval")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command")
    print(json.dumps(measure(cmd, args.grace_s, args.interval_s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
