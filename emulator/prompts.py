"""What a request asks: the records (items) in its prompt and its output schema.

The user message holds one record as ``<item id="ID">CONTENT</item>`` or a
pack ``<items_to_process> <item id="ID" n="N">...</item> ... </items_to_process>``
(ids and content XML-escaped, N the item's number); with no item tag the whole
message is one anonymous item. Each item's content key (its sha256) seeds
everything answered about it, and its words (see `content_words`) are what the
answers' sentences are made of, so that the answer depends on the content only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import re
from typing import Any, List, Mapping, Optional, Tuple

ITEM_RE = re.compile(r'<item id="([^"]*)"(?: n="([0-9]+)")?>(.*?)</item>', re.S)
PACK_MARK = "<items_to_process>"
_PUNCT = ".,;:!?\"()[]{}<>«»“”‘’*_`~|/\\#=+&"
#: The definition of an item's words: its first 240 characters, these
#: punctuation marks read as spaces, split on whitespace, at most 30.
_PUNCT_TO_SPACE = str.maketrans({c: " " for c in _PUNCT})
#: The same mapping for ASCII text as a bytes table: bytes.translate is ~5x
#: faster than str.translate with a dict (which looks up every character).
_ASCII_PUNCT_TO_SPACE = bytes.maketrans(
    bytes(ord(c) for c in _PUNCT if c.isascii()), b" " * sum(c.isascii() for c in _PUNCT))
#: ...and for other text the same table on its UTF-8 bytes (ASCII bytes are ASCII
#: characters there), then str.replace of these few (~15% faster than a regex).
_NON_ASCII_PUNCT = tuple(c for c in _PUNCT if not c.isascii())
_WORDS_PREFIX = 240
_MAX_WORDS = 30
#: The words of an item that has none of its own, and what a sentence drawn
#: from an item with too few is padded with.
FILLER = ("the", "record", "describes", "a", "short", "plain", "note", "about", "its", "content")


@dataclasses.dataclass
class Item:
    """One record found in a prompt. id None = anonymous (no item tag)."""

    id: Optional[str]
    content: str
    _key: Optional[bytes] = None
    _words: Optional[List[str]] = None
    n: Optional[int] = None   # the item's number in its pack (`n` attribute), if given

    @property
    def key(self) -> bytes:
        """sha256 of the content: the seed of everything answered about it."""
        if self._key is None:
            self._key = content_key(self.content)
        return self._key

    @property
    def words(self) -> List[str]:
        if self._words is None:
            self._words = content_words(self.content) or list(FILLER)
        return self._words


def content_words(content: str) -> List[str]:
    """content[:240].translate(_PUNCT_TO_SPACE).split()[:30], computed faster."""
    head = content[:_WORDS_PREFIX]
    if head.isascii():
        spaced = head.encode("ascii").translate(_ASCII_PUNCT_TO_SPACE).decode("ascii")
    else:
        spaced = head.encode("utf-8", "surrogatepass").translate(_ASCII_PUNCT_TO_SPACE).decode(
            "utf-8", "surrogatepass")
        for mark in _NON_ASCII_PUNCT:
            if mark in spaced:
                spaced = spaced.replace(mark, " ")
    # maxsplit: the first 30 words as split() has them, the rest (if any) left as one string
    words = spaced.split(None, _MAX_WORDS)
    if len(words) > _MAX_WORDS:
        del words[_MAX_WORDS]
    return words


def content_key(content: str) -> bytes:
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest()


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
    return "".join(parts)


def user_text(params: Mapping[str, Any]) -> str:
    """Text of the last user message (where the pipeline puts the records)."""
    messages = params.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            return _text_of(message.get("content"))
    return ""


_OPEN = '<item id="'
_N_ATTR = ' n="'
_CLOSE = "</item>"


def _find_items(text: str, limit: Optional[int] = None) -> List[Tuple[str, Optional[int], str]]:
    """(raw id, n or None, raw content) of each `<item id="ID"[ n="N"]>CONTENT</item>`:
    what ITEM_RE.findall gives (its first `limit` ones), with str.find (3x faster)."""
    out: List[Tuple[str, Optional[int], str]] = []
    find = text.find
    i = find(_OPEN)
    while i != -1:
        q = find('"', i + 10)
        if q == -1:
            break
        n, end = _n_attribute(text, q + 1)
        if end is None:
            i = find(_OPEN, i + 1)
            continue
        k = find(_CLOSE, end)
        if k == -1:
            break
        out.append((text[i + 10:q], n, text[end:k]))
        if len(out) == limit:
            break
        i = find(_OPEN, k + 7)
    return out


def _n_attribute(text: str, at: int) -> Tuple[Optional[int], Optional[int]]:
    """(n, index after the tag's ">") for `>` or ` n="123">` at `at`; end None if neither."""
    if text.startswith(">", at):
        return None, at + 1
    if text.startswith(_N_ATTR, at):
        start = at + len(_N_ATTR)
        q = text.find('">', start)
        digits = text[start:q] if q != -1 else ""
        if digits.isascii() and digits.isdigit():
            return int(digits), q + 2
    return None, None


def parse_items(text: str) -> Tuple[bool, List[Item]]:
    """(is_pack, items). A pack needs the <items_to_process> wrapper."""
    is_pack = PACK_MARK in text
    found = _find_items(text, None if is_pack else 1)  # not a pack: its first item only
    if not found:
        return False, [Item(None, text.strip())]
    unescape = html.unescape
    return is_pack, [Item(unescape(i), unescape(c).strip(), n=n) for i, n, c in found]


def output_schema(params: Mapping[str, Any]) -> Optional[Any]:
    """The json_schema of output_config.format, if any."""
    return config_schema(params.get("output_config"))


def config_schema(oc: Any) -> Optional[Any]:
    """output_schema of params whose output_config is `oc`."""
    if not isinstance(oc, dict):
        return None
    fmt = oc.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return fmt.get("schema")
    return None


def plain_answer(item: Item) -> str:
    """The no-schema answer for one record: a short, stable sentence."""
    snippet = " ".join(item.words[:10])
    return f"Summary of the item: {snippet} [{item.key.hex()[:8]}]."
