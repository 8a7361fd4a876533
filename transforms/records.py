"""The typed elements that flow between the product's transforms."""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Record:
    """One input record after normalization.

    record_id: unique within the run; results are matched back by it.
    pack_key:  identity boundary: two records with different pack keys are
               never placed in the same prompt.
    text:      the main content, already valid UTF-8.
    attrs:     the other input fields, available to the prompt template.
    """

    record_id: str
    pack_key: str
    text: str
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Names of the prompt-injection patterns the screen found (provenance).
    flags: Tuple[str, ...] = ()


class Stage(str, enum.Enum):
    """Where in the flow a record was dead-lettered."""

    READ = "read"
    NORMALIZE = "normalize"
    DEDUPE = "dedupe"
    SCREEN = "screen"
    RENDER = "render"
    SUBMIT = "submit"
    COLLECT = "collect"
    UNPACK = "unpack"
    VALIDATE = "validate"


class Reason(str, enum.Enum):
    """Why a record went to the dead letter (the `error_type` column)."""

    UNREADABLE_FILE = "unreadable_file"
    MALFORMED_JSON = "malformed_json"
    MALFORMED_CSV = "malformed_csv"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_UTF8 = "invalid_utf8"
    CONTROL_CHARACTERS = "control_characters"
    MISSING_ID = "missing_id"
    EMPTY_ID = "empty_id"
    INVALID_ID = "invalid_id"
    MISSING_TEXT = "missing_text"
    EMPTY_TEXT = "empty_text"
    INVALID_TEXT = "invalid_text"
    TEXT_TOO_LARGE = "text_too_large"
    DUPLICATE_ID = "duplicate_id"
    TEMPLATE_ERROR = "template_error"
    INJECTION = "injection"
    API_ERROR = "api_error"
    ERRORED = "errored"
    EXPIRED = "expired"
    CANCELED = "canceled"
    #: The ledger names a batch the API does not know (deleted, another workspace or key, results past 29 days).
    BATCH_NOT_FOUND = "batch_not_found"
    MISSING_RESULT = "missing_result"
    INVALID_JSON = "invalid_json"
    SCHEMA_INVALID = "schema_invalid"
    MAX_TOKENS = "max_tokens"
    REFUSAL = "refusal"
    MISSING_IN_PACK = "missing_in_pack"
    DUPLICATED_IN_PACK = "duplicated_in_pack"
    INVENTED_ID = "invented_id"
    SPEND_LIMIT = "spend_limit"
    BUDGET = "budget"
    SHED = "shed"


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One record that did not produce a result, and why."""

    record_id: Optional[str]
    pack_key: Optional[str]
    stage: str
    error_type: str
    error_message: str
    raw: Optional[str] = None
    source: Optional[str] = None
    attempts: int = 0
    batch_id: Optional[str] = None
    custom_id: Optional[str] = None
    #: Tokens this record consumed before it failed (its share of every
    #: request it was in), and their cost: the dead letter is billed too.
    usage: Optional[Mapping[str, int]] = None
    cost_usd: Optional[float] = None


#: A line of input before normalization: (source file, position, raw value).
#: raw is bytes for text formats and a dict for Parquet rows.
RawInput = Tuple[str, int, Any]
