"""Pure functions that turn one raw input (a line, a CSV row, a Parquet row)
into a Record or a DeadLetter with a precise reason. No Beam here: the DoFn in
read.py only calls these, and tests exercise them table by table."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping, Optional, Union

from transforms import fastjson
from transforms.records import DeadLetter, Reason, Record, Stage

#: Default cap on a record's text: far above any email, far below the 256 MB
#: batch limit, and large enough that a few such texts still fit one batch.
DEFAULT_MAX_TEXT_BYTES = 1_000_000
#: Record ids appear in prompts, custom_id hashes and Parquet keys; a longer id
#: is almost certainly a mis-mapped field.
MAX_ID_CHARS = 256
#: The dead letter keeps the raw input for diagnosis, cut at this size so one
#: hostile line cannot bloat the dead-letter files.
MAX_RAW_CHARS = 65_536
#: Pack key for records that have none: each such record is its own identity
#: boundary (prefix cannot collide with a real key, which is a plain value).
NO_KEY_PREFIX = "\x00no-key:"


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Which input fields hold the id, the text and the pack key."""

    id_field: str = "id"
    text_field: str = "text"
    pack_key_field: Optional[str] = None
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES


#: Any lone surrogate: the undecodable bytes of a surrogateescape'd text
#: (U+DC80..U+DCFF) or a JSON escape such as "\\ud800" with no partner.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: "re.Match[str]") -> str:
    code = ord(match.group())
    # An undecodable byte shows as the byte (\xff), any other surrogate as its code point.
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def safe_text(value: str) -> str:
    """`value`, with every lone surrogate written as an escape: the byte 0xff
    that surrogateescape decoded to U+DCFF becomes the four characters \\xff,
    another lone surrogate \\udXXX. The result always encodes as UTF-8 (Parquet,
    Beam's coders, JSON files, logs); valid text is returned as it is."""
    if value.isascii() or not _SURROGATE.search(value):
        return value
    return _SURROGATE.sub(_escape_surrogate, value)


def safe_optional(value: Any) -> Any:
    """safe_text for a string, anything else unchanged (None stays None)."""
    return safe_text(value) if isinstance(value, str) else value


def raw_to_text(raw: Any) -> str:
    """The raw input as a printable string for the dead letter (bounded);
    bytes that are not UTF-8 and lone surrogates are written as escapes (\\xff)."""
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", "backslashreplace")
    elif isinstance(raw, str):
        text = safe_text(raw)
    else:
        text = safe_text(json.dumps(raw, default=str, ensure_ascii=False))
    if len(text) > MAX_RAW_CHARS:
        text = text[:MAX_RAW_CHARS] + f"...[{len(text) - MAX_RAW_CHARS} more characters]"
    return text


def _dead(reason: Reason, message: str, raw: Any, source: str, record_id=None, pack_key=None,
          stage: Stage = Stage.NORMALIZE) -> DeadLetter:
    return DeadLetter(record_id=record_id, pack_key=pack_key, stage=stage.value,
                      error_type=reason.value, error_message=message,
                      raw=raw_to_text(raw), source=source)


def parse_json_line(line: bytes, source: str) -> Union[Mapping[str, Any], DeadLetter]:
    """Decode one JSONL line strictly: UTF-8 first, then JSON, then 'is an object'."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return _dead(Reason.INVALID_UTF8, f"line is not valid UTF-8: {e.reason} at byte {e.start}",
                     line, source)
    if "\x00" in text:
        # A raw NUL is invalid inside a JSON string; name the real problem.
        return _dead(Reason.CONTROL_CHARACTERS, "line contains a NUL byte", line, source)
    try:
        value = fastjson.loads(text)  # orjson where it agrees with json, else json's value or error
    except ValueError as e:
        return _dead(Reason.MALFORMED_JSON, f"line is not valid JSON: {e}", line, source)
    if not isinstance(value, dict):
        return _dead(Reason.NOT_AN_OBJECT, f"line is a JSON {type(value).__name__}, expected an object",
                     line, source)
    return value


def has_surrogates(value: str) -> bool:
    """True when `value` holds a lone surrogate (an undecodable byte): it cannot be encoded as UTF-8."""
    # CSV files (and Parquet strings that are not UTF-8) are decoded with
    # surrogateescape so one bad byte does not poison the whole file; the
    # escaped bytes show up as lone surrogates. A JSON "\\ud800" escape is one too.
    return not value.isascii() and _SURROGATE.search(value) is not None


_has_surrogates = has_surrogates


def _id_of(value: Any) -> Union[str, tuple]:
    """The record id as a string, or (Reason, message) when unusable."""
    if isinstance(value, bool) or value is None or isinstance(value, float) and not value.is_integer():
        return (Reason.INVALID_ID, f"id must be a string or an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, float):
        # 12.0 from a CSV-to-JSON export is an integer id; 12.5 is not.
        if not math.isfinite(value):
            return (Reason.INVALID_ID, f"id must be finite, got {value!r}")
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return (Reason.INVALID_ID, f"id must be a string or an integer, got {type(value).__name__}")
    if not value.strip():
        return (Reason.EMPTY_ID, "id is empty")
    if len(value) > MAX_ID_CHARS:
        return (Reason.INVALID_ID, f"id is {len(value)} characters long, the limit is {MAX_ID_CHARS}")
    if _has_surrogates(value):
        return (Reason.INVALID_UTF8, "id contains bytes that are not valid UTF-8")
    if "\x00" in value:
        return (Reason.INVALID_ID, "id contains invalid bytes")
    return value


def normalize_row(row: Mapping[str, Any], fields: FieldMap, source: str,
                  raw: Any = None) -> Union[Record, DeadLetter]:
    """Validate one parsed row and build its Record (or say exactly why not)."""
    raw = row if raw is None else raw
    if fields.id_field not in row:
        return _dead(Reason.MISSING_ID, f"field {fields.id_field!r} is missing", raw, source)
    record_id = _id_of(row[fields.id_field])
    if isinstance(record_id, tuple):
        return _dead(record_id[0], record_id[1], raw, source)

    pack_key = _pack_key(row, fields, record_id, source)
    if isinstance(pack_key, DeadLetter):
        return pack_key

    def dead(reason: Reason, message: str) -> DeadLetter:
        return _dead(reason, message, raw, source, record_id=record_id, pack_key=pack_key)

    if fields.text_field not in row or row[fields.text_field] is None:
        return dead(Reason.MISSING_TEXT, f"field {fields.text_field!r} is missing")
    text = row[fields.text_field]
    if not isinstance(text, str):
        return dead(Reason.INVALID_TEXT, f"field {fields.text_field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        return dead(Reason.EMPTY_TEXT, f"field {fields.text_field!r} is empty")
    try:
        # (ASCII: one byte per character, no copy.) Encoding fails on the lone
        # surrogates of undecodable bytes.
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return dead(Reason.INVALID_UTF8, "text contains bytes that are not valid UTF-8")
    if "\x00" in text:
        return dead(Reason.CONTROL_CHARACTERS, "text contains NUL characters")
    if size > fields.max_text_bytes:
        return dead(Reason.TEXT_TOO_LARGE,
                    f"text is {size} bytes, over --max-text-bytes={fields.max_text_bytes}")

    attrs = {k: v for k, v in row.items() if k not in (fields.id_field, fields.text_field)}
    return Record(record_id=record_id, pack_key=pack_key, text=text, attrs=attrs)


def _pack_key(row: Mapping[str, Any], fields: FieldMap, record_id: str,
              source: str) -> Union[str, DeadLetter]:
    if not fields.pack_key_field:
        return ""
    value = row.get(fields.pack_key_field)
    if value is None or value == "":
        # No key: never share a prompt with anyone.
        return NO_KEY_PREFIX + record_id
    if isinstance(value, (dict, list)):
        return _dead(Reason.INVALID_ID, f"pack key field {fields.pack_key_field!r} must be a scalar",
                     row, source, record_id=record_id)
    key = str(value)
    if _has_surrogates(key):
        # The key is written to Parquet and decides who shares a prompt: an
        # escaped form could equal another record's real key.
        return _dead(Reason.INVALID_UTF8,
                     f"pack key field {fields.pack_key_field!r} contains bytes that are not valid UTF-8",
                     row, source, record_id=record_id)
    return key


def display_pack_key(pack_key: str) -> Optional[str]:
    """The pack key as written to Parquet: None for records without one."""
    return None if pack_key.startswith(NO_KEY_PREFIX) else pack_key
