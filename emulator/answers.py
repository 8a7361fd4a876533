"""Deterministic answers: what the emulated model says, and why it is stable.

Contract with the pipeline (see docs/architecture.md):

* The user message holds one record as ``<item id="ID">CONTENT</item>`` or a
  pack ``<items_to_process> <item id="ID" n="N">...</item> ...
  </items_to_process>``; ids and content are XML-escaped, N is the item's
  number. No item tag: the whole message is one anonymous item.
* A pack element names its item by the key its item schema declares: ``n``
  (the pipeline's packs: the item's number) or ``id`` (the item's id, for
  clients that ask for it). Faults and stats always work on item ids.
* Every generated value is seeded by ``sha256(html.unescape(CONTENT).strip())``
  and by the value's *path* in the schema (``label``, ``tags[0]``,
  ``address.city``), never by the item's id or position. So the same record
  gets the same answer alone, in a pack, in a batch, and in any order: the
  object a pack returns for an item equals, field for field, what a single
  request with the task's schema returns for it (plus its key).
* With ``output_config.format`` = json_schema: compact JSON valid against the
  schema (the subset emulator.schemagen supports; ``pattern`` is not honoured).
* Without a schema: a short sentence (single) or
  ``{"results":[{"id":ID,"output":SENTENCE},...]}`` (pack). A pack whose
  item schema is exactly {key, output: string} (the pipeline's free-text pack)
  also gets SENTENCE as output, so free text agrees across modes too.
* Output tokens = tokenizer.count_text(text); over max_tokens the text is cut to
  max_tokens*4 bytes and stop_reason is "max_tokens".

This module puts an answer together (and applies the pack faults); the parts
live in: emulator.prompts (the items of a prompt, their keys, words and plain
sentence), emulator.rng (the seeded draws), emulator.schemagen (values from a
JSON schema) and emulator.packs (a pack's plan and per-item objects).

`expected_output(content, schema)` gives a test the answer for one record.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Mapping, Optional, Tuple

from emulator import jsonutil
from emulator.memo import IdentityMemo
from emulator.packs import PackPlan, pack_element, pack_plan, violate_item_schema
from emulator.prompts import Item, config_schema, plain_answer
from emulator.schemagen import schema_generator
from emulator.tokenizer import count_text


def single_answer_value(item: Item, schema: Any) -> Any:
    """The value a single request returns (None schema -> the sentence)."""
    if schema is None:
        return plain_answer(item)
    return schema_generator(schema)(item)


def expected_output(content: str, schema: Any = None) -> Any:
    """What a single request answers for a record with this (unescaped) content.

    A pack answers the same fields for the same content (plus its key);
    without a schema a pack element is {"id": ID, "output": expected_output(content)}.
    """
    return single_answer_value(Item("x", content.strip()), schema)



@dataclasses.dataclass
class Answer:
    """The assistant's text and which item ids it validly answers."""

    text: str
    stop_reason: str
    output_tokens: int
    ids: List[str]            # every item id in the request (with repeats)
    answered_ids: List[str]   # ids with a complete, valid answer
    faults: List[str]         # names of the pack faults that fired


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """At most max_tokens*4 UTF-8 bytes, cut on a character boundary."""
    return text.encode("utf-8", "surrogatepass")[: max_tokens * 4].decode("utf-8", "ignore")


_UNSET: Any = object()


class _Answering:
    """How requests with one output_config value are answered: its schema, and
    that schema's single-answer generator and pack plan, each found on first use."""

    __slots__ = ("schema", "_single", "_pack")

    def __init__(self, output_config: Any):
        self.schema = config_schema(output_config)
        self._single = self._pack = _UNSET

    def single(self) -> Callable[[Item], Any]:
        """schema_generator(schema), for a schema that is not None."""
        if self._single is _UNSET:
            self._single = schema_generator(self.schema)
        return self._single

    def pack(self) -> Optional[PackPlan]:
        """pack_plan(schema)."""
        if self._pack is _UNSET:
            self._pack = pack_plan(self.schema)
        return self._pack


#: By output_config object: a batch's requests share one (BatchStore.create), so
#: its schema is looked up, and its generator or pack plan found, once per batch.
_answering = IdentityMemo(_Answering)


def build_answer(params: Mapping[str, Any], is_pack: bool, items: List[Item], faults=None,
                 ids: Optional[List[str]] = None) -> Answer:
    """The answer to a validated Messages request (pack faults applied).

    ids: the items' ids (not None), if the caller has them already.
    """
    if ids is None:
        ids = [it.id for it in items if it.id is not None]
    if not is_pack:
        text, stop, out_tokens = single_answer(params, items[0])
        return Answer(text, stop, out_tokens, ids, [] if stop == "max_tokens" else list(ids), [])
    answering = _answering(params.get("output_config"))
    schema = answering.schema
    max_tokens = int(params.get("max_tokens") or 1)
    fired: List[str] = []
    answered: List[str]
    plan = answering.pack()
    if plan is None:
        # Not the pipeline's pack shape: answer the schema as a whole.
        whole = Item(None, "\n".join(it.content for it in items))
        text = jsonutil.dumps(single_answer_value(whole, schema))
        return _finish(text, "end_turn", max_tokens, ids, list(ids), fired)
    # (item id, answer object): faults pick items by id, whatever key answers carry.
    elements = [(it.id, pack_element(it, plan, pos)) for pos, it in enumerate(items, start=1)]
    corrupted = set()
    if faults:
        spec = faults.fire("pack_drop_ids", ids)
        if spec:
            fired.append(spec.name)
            drop = set(faults.choose(spec, ids))
            elements = [(i, e) for i, e in elements if i not in drop]
            corrupted |= drop
        spec = faults.fire("pack_duplicate_ids", ids)
        if spec:
            fired.append(spec.name)
            chosen = set(faults.choose(spec, ids))
            elements += [(it.id, pack_element(it, plan, pos, salt="#duplicate"))
                         for pos, it in enumerate(items, start=1) if it.id in chosen]
            corrupted |= chosen
        spec = faults.fire("pack_invent_ids", ids)
        if spec:
            fired.append(spec.name)
            for j in range(int(spec.opt("count") or 1)):
                seed_item = items[j % len(items)]
                # A number past the pack's last item, and an id no item has.
                fake = Item(f"invented-{seed_item.key.hex()[:6]}-{spec.fired}-{j}",
                            seed_item.content + f"#invented{j}", n=len(items) + 1 + j)
                elements.append((fake.id, pack_element(fake, plan, fake.n)))
        spec = faults.fire("pack_ignore_schema", ids)
        if spec:
            fired.append(spec.name)
            chosen = set(faults.choose(spec, ids))
            for i, e in elements:
                if i in chosen:
                    violate_item_schema(e, plan.item_schema, schema, plan.key)
            corrupted |= chosen
    text = jsonutil.dumps({"results": [e for _, e in elements]})
    answered = [i for i in ids if i not in corrupted]
    stop = "end_turn"
    if faults:
        if faults.fire("pack_invalid_json", ids):
            fired.append("pack_invalid_json")
            text = text[:-1] + ',"'
            answered = []
        if faults.fire("pack_max_tokens", ids):
            fired.append("pack_max_tokens")
            text = truncate_to_tokens(text, max(1, count_text(text) // 2))
            answered = []
            stop = "max_tokens"
    return _finish(text, stop, max_tokens, ids, answered, fired)


def single_answer(params: Mapping[str, Any], item: Item) -> Tuple[str, str, int]:
    """(text, stop_reason, output_tokens) of a validated request holding one record
    (not a pack): build_answer's answer, without the Answer (see Engine.answer_single)."""
    answering = _answering(params.get("output_config"))
    max_tokens = int(params.get("max_tokens") or 1)
    text = plain_answer(item) if answering.schema is None else jsonutil.dumps(answering.single()(item))
    return _fit(text, "end_turn", max_tokens)


def _fit(text: str, stop: str, max_tokens: int) -> Tuple[str, str, int]:
    """(text, stop, output tokens), the text cut to max_tokens (stop "max_tokens") if over."""
    out_tokens = count_text(text)
    if out_tokens > max_tokens:
        text = truncate_to_tokens(text, max_tokens)
        out_tokens = count_text(text)
        stop = "max_tokens"
    return text, stop, out_tokens


def _finish(text: str, stop: str, max_tokens: int, ids: List[str], answered: List[str],
            fired: List[str]) -> Answer:
    text, stop, out_tokens = _fit(text, stop, max_tokens)
    if stop == "max_tokens":
        answered = []
    return Answer(text, stop, out_tokens, ids, answered, fired)
