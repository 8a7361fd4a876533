"""Reading the input for a plan: the job's own normalizer over a sample, and a cheap full count."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
from typing import Any, Dict, Iterator, List, Optional, Tuple

from transforms.io.normalize import FieldMap
from transforms.records import DeadLetter, Reason, Record
from transforms.prompts.task import Task, TemplateError


# ---------------------------------------------------------------------------
# Reading the input (the job's normalizer, a sample, a cheap full count)


@dataclasses.dataclass
class _Sample:
    records: List[Record]
    dead: collections.Counter
    rows_sampled: int
    rows_total: int
    sampling: str
    files: int


def _files(pattern: str) -> List[str]:
    from apache_beam.io.filesystems import FileSystems
    matched = FileSystems.match([pattern])[0].metadata_list
    if not matched:
        raise ValueError(f"--input {pattern!r} matches no file")
    return sorted(m.path for m in matched)


def _rows(path: str, fmt: str, fields: FieldMap) -> Iterator[Any]:
    """Records and DeadLetters of one file, exactly as the job's reader makes them."""
    from apache_beam.io.filesystems import FileSystems
    from transforms.io.read import _ParseFile
    parser = _ParseFile(fields, fmt)
    with FileSystems.open(path) as f:
        yield from parser._rows_of(f, fmt, path)  # the job's own row loop: same rows, same reasons


def count_rows(path: str, fmt: str) -> int:
    """Rows of one file without parsing them: non-blank lines (JSONL), CSV rows
    (quoted newlines respected), Parquet metadata."""
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path) as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            return pq.ParquetFile(f).metadata.num_rows
        if fmt == "csv":
            import csv
            csv.field_size_limit(64 * 1024 * 1024)
            text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
            return max(0, sum(1 for _ in csv.reader(text)) - 1)
        return sum(1 for line in f if line.strip())


def _key_of(item: Any, fields: FieldMap) -> str:
    """What random sampling draws: whole pack keys (so packs in the sample are
    as full as in the input), or single records when there is no pack key."""
    if isinstance(item, DeadLetter):
        return f"{item.pack_key}" if fields.pack_key_field and item.pack_key else f"@{item.source}"
    return item.pack_key if fields.pack_key_field else f"#{item.record_id}"


def _drawn(key: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}|{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2 ** 64


def read_sample(pattern: str, fields: FieldMap, input_format: Optional[str], task: Task,
                 sample: int, sampling: str, seed: int = 0) -> _Sample:
    """Rows of the input as the job reads them: all of them when they fit in
    `sample`, else the first `sample` rows ("first": the other rows are only
    counted) or about `sample` rows drawn by pack key ("random": every row is
    read, whole pack keys are kept so packing is planned as it will run)."""
    from transforms.io.read import detect_format
    files = _files(pattern)
    dead: collections.Counter = collections.Counter()
    formats: Dict[str, Optional[str]] = {}
    for path in files:
        try:
            formats[path] = detect_format(path, input_format)
        except ValueError:
            formats[path] = None
            dead[Reason.UNREADABLE_FILE.value] += 1
    readable = [p for p in files if formats[p]]
    if sampling == "auto":
        sampling = "random" if fields.pack_key_field else "first"

    def rows_of(path: str) -> Iterator[Tuple[int, Any]]:
        try:
            yield from enumerate(_rows(path, formats[path], fields))
        except Exception:  # noqa: BLE001 - the job makes an unreadable file one dead letter too
            dead[Reason.UNREADABLE_FILE.value] += 1

    picked: List[Tuple[str, int, Any]] = []
    if sampling == "random":
        total = 0
        for path in readable:
            try:
                total += count_rows(path, formats[path])
            except Exception:  # noqa: BLE001 - counted as unreadable below
                pass
        fraction = 1.0 if total <= sample else sample / total
        seen = 0
        for path in readable:
            for index, item in rows_of(path):
                seen += 1
                if fraction >= 1.0 or _drawn(_key_of(item, fields), fraction, seed):
                    picked.append((path, index, item))
        total = seen
        complete = fraction >= 1.0
    else:
        complete = True
        for path in readable:
            for index, item in rows_of(path):
                if len(picked) >= sample:
                    complete = False
                    break
                picked.append((path, index, item))
            if not complete:
                break
        total = len(picked)
        if not complete:
            total = 0
            for path in readable:
                try:
                    total += count_rows(path, formats[path])
                except Exception:  # noqa: BLE001
                    continue
    # Duplicates: the first in (file, position) order wins, as in the job.
    picked.sort(key=lambda p: (p[0], p[1]))
    records: List[Record] = []
    ids = set()
    for _, _, item in picked:
        if isinstance(item, DeadLetter):
            dead[item.error_type] += 1
            continue
        if item.record_id in ids:
            dead[Reason.DUPLICATE_ID.value] += 1
            continue
        ids.add(item.record_id)
        try:
            task.render(item)
        except TemplateError:
            dead[Reason.TEMPLATE_ERROR.value] += 1
            continue
        records.append(item)
    return _Sample(records, dead, len(picked), max(total, len(picked)),
                   "all" if complete else sampling, len(files))
