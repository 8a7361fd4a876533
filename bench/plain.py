"""The yardstick: a plain Beam pass with no API at all.

read JSONL -> parse -> key -> stateful DoFn (bag + timer) -> Parquet.
The product's own overhead is judged against this on the same records."""
from __future__ import annotations

import argparse
import json
import sys

import apache_beam as beam
import pyarrow as pa
from apache_beam.coders import coders
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer

SCHEMA = pa.schema([("id", pa.string()), ("customer_id", pa.string()), ("chars", pa.int64())])
_FLUSH_EVERY = 1000  # elements per flush: keeps the bag small, like the product's batcher


class _Buffer(beam.DoFn):
    BAG = BagStateSpec("bag", coders.PickleCoder())
    END = TimerSpec("end", TimeDomain.WATERMARK)

    def process(self, element, window=beam.DoFn.WindowParam, bag=beam.DoFn.StateParam(BAG),
                end=beam.DoFn.TimerParam(END)):
        bag.add(element[1])
        end.set(window.max_timestamp())

    @on_timer(END)
    def flush(self, bag=beam.DoFn.StateParam(BAG)):
        for row in bag.read():
            yield row
        bag.clear()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    args, beam_args = parser.parse_known_args(argv)
    with beam.Pipeline(argv=beam_args) as p:
        (p | "Read" >> beam.io.ReadFromText(args.input)
           | "Parse" >> beam.Map(json.loads)
           | "Key" >> beam.Map(lambda r: (hash(r["id"]) % 4, {"id": r["id"], "customer_id": r["customer_id"],
                                                              "chars": len(r["text"])}))
           | "Stateful" >> beam.ParDo(_Buffer())
           | "Write" >> beam.io.WriteToParquet(args.output + "/part", SCHEMA, file_name_suffix=".parquet"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
