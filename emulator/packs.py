"""Pack answers: one object per item of a pack, keyed by the key its item schema declares.

A pack's schema is ``{"properties": {"results": {"type": "array", "items":
ITEM}}}``. Each item's object holds the fields a single request with ITEM's
fields answers for its content (the same generators, so every mode agrees)
plus its key: ``n`` (the item's number, what the pipeline asks for) or ``id``.
The plan of a schema (its fields compiled, its key chosen) is found once per
schema. `violate_item_schema` is what the pack_ignore_schema fault does.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from emulator.prompts import Item, plain_answer
from emulator.schemagen import OBJECT, STRING, cached, compile_node, node_generator, resolve, schema_key

_PLAIN = (STRING, "plain-answer", 0, None)


#: Answer keys a pack's item schema may declare, in order of preference: the
#: item's number `n` (what the pipeline asks for) or its `id`.
ANSWER_KEYS = ("n", "id")


class PackPlan:
    """How to answer one pack element: the item schema, its compiled fields, its key."""

    def __init__(self, item_schema: Optional[Dict[str, Any]], entries: Optional[List[Tuple[str, Any]]],
                 key: str = "id"):
        self.item_schema = item_schema
        self.entries = entries  # [(name, node)], node None for the key; None = no schema
        self.key = key
        # (name, node, generator of the field's value): generators built once per schema
        self.fields = [(name, sub, None if sub is None or sub is _PLAIN else node_generator(sub, name))
                       for name, sub in entries or ()]


def pack_item_schema(schema: Any) -> Optional[Dict[str, Any]]:
    """ITEM of {"properties":{"results":{"type":"array","items":ITEM}}}, else None."""
    if not isinstance(schema, dict):
        return None
    root = resolve(schema, schema)
    results = (root.get("properties") or {}).get("results") if isinstance(root, dict) else None
    results = resolve(results, schema)
    if not isinstance(results, dict):
        return None
    items = resolve(results.get("items"), schema)
    return items if isinstance(items, dict) else None


def pack_plan(schema: Any) -> Optional[PackPlan]:
    """The plan for a pack's schema (None schema -> plain outputs; None = not a pack shape)."""
    if schema is None:
        return PackPlan(None, None)

    def build() -> Optional[PackPlan]:
        item_schema = pack_item_schema(schema)
        if item_schema is None:
            return None
        node = compile_node(item_schema, schema, 0)
        entries = list(node[1]) if node[0] == OBJECT else []
        names = {name for name, _ in entries}
        key = next((k for k in ANSWER_KEYS if k in names), "id")
        entries = [(name, None if name == key else sub) for name, sub in entries]
        if key not in names:
            entries.insert(0, (key, None))
        if {name for name, _ in entries} == {key, "output"} and dict(entries)["output"][0] == STRING:
            # The pipeline's free-text pack {key,"output"}: answer what a single
            # no-schema request answers, so every mode agrees.
            entries = [(name, _PLAIN if name == "output" else sub) for name, sub in entries]
        return PackPlan(item_schema, entries, key)

    return cached(b"P" + schema_key(schema), build)


def pack_element(item: Item, plan: PackPlan, position: int, salt: str = "") -> Dict[str, Any]:
    """One object of a pack's results: the item's fields (as a single answer has
    them) plus its key: its `n` (else its 1-based position) or its id."""
    seeded = item if not salt else Item(item.id, item.content + salt)
    if plan.entries is None:
        return {"id": item.id, "output": plain_answer(seeded)}
    key = (item.n if item.n is not None else position) if plan.key == "n" else item.id
    return {name: (key if sub is None else plain_answer(seeded) if sub is _PLAIN
                   else gen(seeded)) for name, sub, gen in plan.fields}


def violate_item_schema(obj: Dict[str, Any], item_schema: Optional[Dict[str, Any]], root: Any, key: str) -> None:
    """Make obj invalid against the item schema (pack_ignore_schema), its key untouched."""
    if item_schema is None:
        obj.pop("output", None)
        return
    for name in item_schema.get("required") or ():
        if name != key and name in obj:
            del obj[name]
            return
    props = item_schema.get("properties") or {}
    for name, sub in props.items():
        sub = resolve(sub, root)
        if name != key and isinstance(sub, dict) and isinstance(sub.get("enum"), list):
            obj[name] = "__not_in_enum__" if "__not_in_enum__" not in sub["enum"] else 123456789
            return
    wrong = {"string": 12345, "integer": "not a number", "number": "not a number",
             "boolean": "maybe", "array": "not an array", "object": "not an object"}
    for name, sub in props.items():
        sub = resolve(sub, root)
        if name != key and isinstance(sub, dict) and isinstance(sub.get("type"), str) \
                and sub["type"] in wrong:
            obj[name] = wrong[sub["type"]]
            return
    obj["unexpected_field_from_emulator"] = True  # only invalid with additionalProperties false
