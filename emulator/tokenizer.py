"""The emulator's stand-in for Anthropic's tokenizer: what it bills and what
/v1/messages/count_tokens reports.

Claude's real tokenizer is not public. For now this one counts a text as
ceil(UTF-8 bytes / 4), and adds a fixed framing cost per request (7) and per
message or system prompt (3), and the compact, key-sorted, ASCII-escaped JSON
text of the output schema. That is on purpose exactly what the product's own
estimator predicts, so planned and billed counts agree against the emulator.
A later change makes this tokenizer deliberately differ from the estimate (as
the real API does), which is why the emulator keeps its own copy of the rule
instead of importing the product's.

A request's count is split in two parts the server memoizes differently:
`shared_request_tokens` (framing, system prompt, schema: what every request
of a job repeats) and `messages_tokens` (what differs per request).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["count_text", "estimate_request_tokens", "messages_tokens", "shared_request_tokens",
           "system_tokens"]

#: UTF-8 bytes per token of the stand-in rule (English prose is about 4).
_BYTES_PER_TOKEN = 4
#: What every request costs before its content: role markers and framing.
_PER_REQUEST = 7
#: What each message, and a non-empty system prompt, costs besides its text.
_PER_BLOCK = 3

#: The schema's text as it is counted: compact, keys sorted, non-ASCII escaped.
_schema_text = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def count_text(text: str) -> int:
    """Tokens of one text: its UTF-8 length (lone surrogates kept) over 4, rounded up."""
    size = len(text.encode("utf-8", "surrogatepass")) if text else 0
    return -(-size // _BYTES_PER_TOKEN)


def _joined_text(content: Any) -> str:
    """A message content or system value as one text: a string as is; of a list,
    the text of its {"type": "text"} blocks, concatenated (other blocks count 0)."""
    if isinstance(content, str):
        return content
    return "".join(str(block.get("text", "")) for block in content or ()
                   if isinstance(block, Mapping) and block.get("type") == "text")


def system_tokens(system: Any) -> int:
    """Tokens of a `system` value (string or text blocks); 0 when there is none.

    The cache counts its prefixes with this too: a prefix of blocks costs the
    tokens of their concatenated text, plus the framing once.
    """
    return count_text(_joined_text(system)) + _PER_BLOCK if system else 0


def _schema_tokens(output_config: Any) -> int:
    """Tokens of output_config.format.schema, when there is one."""
    schema = ((output_config or {}).get("format") or {}).get("schema")
    return count_text(_schema_text(schema)) if schema else 0


def shared_request_tokens(params: Mapping[str, Any]) -> int:
    """The tokens of a request that its job's other requests repeat: the
    framing, the system prompt and the output schema."""
    fixed = _PER_REQUEST + system_tokens(params.get("system"))
    return fixed + _schema_tokens(params.get("output_config"))


def messages_tokens(params: Mapping[str, Any]) -> int:
    """The tokens of a request's messages: each one's text plus its framing."""
    messages = params.get("messages") or ()
    texts = sum(count_text(_joined_text(m.get("content"))) for m in messages)
    return texts + _PER_BLOCK * len(messages)


def estimate_request_tokens(params: Mapping[str, Any]) -> int:
    """All input tokens of a Messages request body, as count_tokens reports them
    (cached and uncached together: the caller splits them)."""
    return shared_request_tokens(params) + messages_tokens(params)
