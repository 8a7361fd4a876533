"""Refresh deploy/metadata.json (the Flex Template's parameters) from the options parser.

    .venv/bin/python deploy/make_metadata.py          # rewrite deploy/metadata.json
    .venv/bin/python deploy/make_metadata.py --check  # exit 1 if it is out of date

Every flag of `python -m pipeline` (pipeline/options.py) is one parameter,
named by its dest (the launcher passes `--<name>=<value>`). Labels and regexes
already in metadata.json are kept (they are curated by hand); a new flag gets
a label from its dest, its help text, and a regex from its type or choices;
a flag that no longer exists is dropped. tests/test_dataflow.py checks the
file against the parser in both directions.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METADATA = os.path.join(HERE, "metadata.json")

#: Parameters a launch must give. --input is optional: a streaming job reads
#: --input-subscription or --input-topic instead (validate() enforces one).
REQUIRED = ("task", "output")
BOOL_REGEX = "^(true|false)$"
INT_REGEX = "^[1-9][0-9]*$"
FLOAT_REGEX = "^[0-9]+(\\.[0-9]+)?$"


def our_actions():
    sys.path.insert(0, ROOT)
    from pipeline.options import help_parser
    return [a for a in help_parser()._actions if a.dest != "help" and a.help != argparse.SUPPRESS]


def derived_regexes(action):
    if action.choices:
        return ["^(" + "|".join(re.escape(str(c)).replace("\\-", "-") for c in action.choices) + ")$"]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return [BOOL_REGEX]
    if action.type is int:
        return [INT_REGEX]
    if action.type is float:
        return [FLOAT_REGEX]
    return None


def help_text(action) -> str:
    text = (action.help or "").replace("%%", "%")
    if action.default not in (None, False, True) and "default" not in text.lower():
        text += f" Default: {action.default}."
    return re.sub(r"\s+", " ", text).strip()


def build(existing: dict) -> dict:
    old = {p["name"]: p for p in existing.get("parameters", [])}
    params = []
    for action in our_actions():
        before = old.get(action.dest, {})
        param = {
            "name": action.dest,
            "label": before.get("label") or action.dest.replace("_", " ").capitalize(),
            "helpText": help_text(action),
            "isOptional": action.dest not in REQUIRED,
        }
        regexes = before.get("regexes") or derived_regexes(action)
        if regexes:
            param["regexes"] = regexes
        params.append(param)
    out = {k: v for k, v in existing.items() if k != "parameters"}
    out["parameters"] = params
    return out


def main(argv) -> int:
    with open(METADATA, encoding="utf-8") as f:
        existing = json.load(f)
    fresh = build(existing)
    text = json.dumps(fresh, indent=2, ensure_ascii=False) + "\n"
    if "--check" in argv:
        with open(METADATA, encoding="utf-8") as f:
            if f.read() != text:
                print("deploy/metadata.json is out of date: run python deploy/make_metadata.py",
                      file=sys.stderr)
                return 1
        return 0
    with open(METADATA, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {METADATA}: {len(fresh['parameters'])} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
