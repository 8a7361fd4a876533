"""The one token estimator shared by the planner, the batcher and the emulator.

Claude's tokenizer is not public, so every part of this product that needs a
token count before the API has answered uses this estimator, and the local
emulator reports usage with the same function. That makes planned and actual
counts agree exactly against the emulator, and within the usual 10-20% of the
real tokenizer for English prose (about 4 UTF-8 bytes per token).
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

#: Bytes per token for English prose: the commonly quoted ratio for Claude.
BYTES_PER_TOKEN = 4.0
#: Fixed cost of a request (role markers, message framing), like the real API's.
REQUEST_OVERHEAD_TOKENS = 7
#: Framing of each message or system block.
MESSAGE_OVERHEAD_TOKENS = 3


def estimate_tokens(text: str) -> int:
    """Tokens in a piece of text: ceil(utf-8 bytes / 4); 0 for empty text."""
    if not text:
        return 0
    return int(math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN))


def _content_text(content: Any) -> str:
    """Concatenated text of a message content (string or list of blocks)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or ():
        if isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def system_tokens(system: Any) -> int:
    """Tokens of the `system` parameter (string or list of text blocks)."""
    if not system:
        return 0
    return estimate_tokens(_content_text(system)) + MESSAGE_OVERHEAD_TOKENS


def schema_tokens(params: Mapping[str, Any]) -> int:
    """Tokens the structured-output schema adds (its compact JSON text)."""
    fmt = (params.get("output_config") or {}).get("format") or {}
    schema = fmt.get("schema")
    if not schema:
        return 0
    return estimate_tokens(json.dumps(schema, separators=(",", ":"), sort_keys=True))


def estimate_request_tokens(params: Mapping[str, Any]) -> int:
    """Input tokens of a Messages request body, as count_tokens reports them.

    Sum of: a fixed request overhead, the system prompt, each message's text
    plus its framing, and the output schema. Cached and uncached tokens are
    not told apart here; the caller (or the emulator) splits them.
    """
    return shared_request_tokens(params) + messages_tokens(params)


def shared_request_tokens(params: Mapping[str, Any]) -> int:
    """The part of estimate_request_tokens that every request of a job repeats
    (overhead, system prompt, schema): a server may count it once per value."""
    return REQUEST_OVERHEAD_TOKENS + system_tokens(params.get("system")) + schema_tokens(params)


def messages_tokens(params: Mapping[str, Any]) -> int:
    """The part of estimate_request_tokens that differs per request: its messages."""
    total = 0
    for message in params.get("messages") or ():
        total += estimate_tokens(_content_text(message.get("content"))) + MESSAGE_OVERHEAD_TOKENS
    return total
