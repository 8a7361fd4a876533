"""Command line: `python -m emulator --port 8787`; point clients at it with
ANTHROPIC_BASE_URL=http://127.0.0.1:8787 (any non-empty API key works unless
--api-key is given). Stops on Ctrl-C / SIGTERM.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from emulator import Emulator
from emulator.config import BATCH_LEVEL_FAULTS, EmulatorConfig, load_faults_file, load_file
from emulator.faults import __doc__ as FAULTS_DOC


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m emulator",
        description="A local Anthropic-compatible API (Messages, count_tokens, Message Batches) "
                    "with deterministic answers, token-bucket rate limits and fault injection.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Control endpoints: GET /_emulator/stats[?items=0], POST /_emulator/reset, "
               "GET|POST /_emulator/config (JSON of config fields).\n\nFaults file (YAML or JSON):"
               + FAULTS_DOC.split("\n", 1)[1])
    d = EmulatorConfig()
    ap.add_argument("--host", default=d.host, help="address to bind (default %(default)s: loopback only)")
    ap.add_argument("--port", type=int, default=8787, help="port to bind (default %(default)s; 0 = any free)")
    ap.add_argument("--config", metavar="FILE",
                    help="YAML/JSON file of config fields (flags given on the command line win)")
    ap.add_argument("--faults", metavar="FILE", help="YAML/JSON file: {fault_name: spec} (see below)")
    ap.add_argument("--seed", type=int, help=f"seed of fault decisions and result order (default {d.seed})")
    ap.add_argument("--time-scale", type=float,
                    help="multiplies simulated durations: latency, batch delay/expiry, cache TTL "
                         f"(default {d.time_scale})")
    ap.add_argument("--batch-delay-s", type=float,
                    help=f"seconds (scaled) a batch stays in_progress (default {d.batch_delay_s})")
    ap.add_argument("--batch-expire-after-s", type=float,
                    help="seconds (scaled) after which an unfinished batch ends with items expired "
                         "(default: never)")
    ap.add_argument("--rpm", type=float,
                    help="requests per minute per model (default: not enforced; the headers report "
                         "a documented default limit)")
    ap.add_argument("--itpm", type=float,
                    help="input tokens per minute per model, cache reads excluded (default: not "
                         "enforced; the headers report a documented default limit)")
    ap.add_argument("--otpm", type=float,
                    help="output tokens per minute per model (default: not enforced; the headers "
                         "report a documented default limit)")
    ap.add_argument("--bucket-capacity-s", type=float,
                    help=f"burst size of each bucket in seconds of refill (default {d.bucket_capacity_s})")
    ap.add_argument("--latency-ms", type=float,
                    help=f"time to first token of a Messages call, scaled (default {d.latency_ms})")
    ap.add_argument("--output-tokens-per-s", type=float,
                    help="generation speed of a Messages call, scaled (default: instant)")
    ap.add_argument("--min-cacheable-tokens", type=int,
                    help=f"shortest cacheable system prefix (default {d.min_cacheable_tokens})")
    ap.add_argument("--max-batch-requests", type=int,
                    help=f"requests allowed per batch (default {d.max_batch_requests})")
    ap.add_argument("--max-batch-bytes", type=int,
                    help=f"bytes allowed per batch create body (default {d.max_batch_bytes})")
    ap.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                    help="accept only this key (repeatable; default: any non-empty key)")
    return ap


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    fields = load_file(args.config) if args.config else {}
    if args.faults:
        faults = load_faults_file(args.faults)
        for name in BATCH_LEVEL_FAULTS & set(faults):
            fields[name] = faults.pop(name)
        fields["faults"] = faults
    for name in ("seed", "time_scale", "batch_delay_s", "batch_expire_after_s", "rpm", "itpm", "otpm",
                 "bucket_capacity_s", "latency_ms", "output_tokens_per_s", "min_cacheable_tokens",
                 "max_batch_requests", "max_batch_bytes", "api_keys"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    fields["host"] = args.host
    fields["port"] = args.port
    return EmulatorConfig.from_mapping(fields)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as e:
        print(f"emulator: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emu = Emulator(config).start()
    print(f"Anthropic API emulator listening on {emu.base_url} "
          f"(export ANTHROPIC_BASE_URL={emu.base_url})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
