"""The output schemas as sent are computed where the job is built and carried
by the RequestBuilder as data: transforms/prompts/requests.py stays pure."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import anthropic
import pytest

from transforms.prompts import packing
from transforms.api.client import wire_schemas
from transforms.records import Record
from transforms.prompts.requests import RequestBuilder
from transforms.prompts.task import Task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = Task(model="claude-haiku-4-5", system="Be brief.", template="{text}",
            output_schema={"type": "object", "properties": {"score": {"type": "number", "minimum": -1},
                                                            "label": {"type": "string", "maxLength": 9}},
                           "required": ["label", "score"], "additionalProperties": False})


def test_requests_imports_neither_the_sdk_nor_an_api_module():
    code = ("import sys, transforms.prompts.requests; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'anthropic' or m in "
            "('transforms.api.client', 'transforms.batches.route', 'transforms.batches.collect', 'transforms.messages', "
            "'transforms.batches.lifecycle')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_schemas_sent_are_the_sdks_transform_of_the_tasks():
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    canonical = json.loads(json.dumps(dict(TASK.output_schema), sort_keys=True))
    assert builder.output_schema(False) == anthropic.transform_schema(canonical)
    packed = json.loads(json.dumps(packing.pack_schema(TASK.output_schema), sort_keys=True))
    assert builder.output_schema(True) == anthropic.transform_schema(packed)
    # ...carried as data: a builder unpickled on a worker sends the same body.
    record = Record("a", "k", "hello")
    again = pickle.loads(pickle.dumps(builder))
    assert again.batch_body([again.single(record)]) == builder.batch_body([builder.single(record)])


def test_a_builder_without_its_schemas_says_how_to_make_them():
    builder = RequestBuilder(task=TASK, run_id="r1")
    with pytest.raises(ValueError, match="wire_schemas"):
        builder.params(builder.single(Record("a", "k", "hello"), shared=(0, 0)))
    free_text = RequestBuilder(task=Task(model="claude-haiku-4-5", system="s", template="{text}"), run_id="r1")
    assert free_text.output_schema(False) is None  # a single free-text request has no schema to send
