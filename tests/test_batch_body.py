"""The create body is streamed in chunks: same bytes, exact length, re-iterable."""
import json
import pickle
import pickletools

import pytest

from tests.conftest import fake_key
from transforms.records import Record
from transforms.api.client import wire_schemas
from transforms.prompts.requests import BatchBody, RequestBuilder
from transforms.prompts.task import Task

TASK = Task(model="claude-haiku-4-5", system="Be brief. " * 300, template="{text}",
            output_schema={"type": "object", "properties": {"label": {"type": "string"}},
                           "required": ["label"], "additionalProperties": False})


def _requests(builder, n=40):
    recs = [Record(f"id-{i}", "k", f'text "{i}" \u00e9 </item>' * (i + 1)) for i in range(n)]
    return [builder.single(r) for r in recs[:-3]] + [builder.pack(recs[-3:])]


def test_streamed_body_joins_to_the_plain_json(monkeypatch):
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    requests = _requests(builder)
    monkeypatch.setattr(BatchBody, "CHUNK_BYTES", 5000)  # several chunks
    body = builder.batch_body_stream(requests)
    chunks = list(body)
    assert len(chunks) > 3 and all(chunks)
    joined = b"".join(chunks)
    assert len(joined) == body.size
    assert joined == bytes(body) == builder.batch_body(requests)
    assert b"".join(body) == joined  # re-iterable: a retried create sends the same bytes
    expected = [{"custom_id": r.custom_id, "params": builder.params(r)} for r in requests]
    assert json.loads(joined) == {"requests": expected}


def test_the_sdk_sends_the_streamed_body_with_its_length():
    """Against the emulator: the batch is created from the chunks, every request in it."""
    import anthropic
    from anthropic.types.messages import MessageBatch

    import emulator
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    requests = _requests(builder)
    body = builder.batch_body_stream(requests)
    with emulator.running() as emu:
        client = anthropic.Anthropic(api_key=fake_key("body"), base_url=emu.base_url, max_retries=0)
        try:
            batch = client.post("/v1/messages/batches", cast_to=MessageBatch, content=body,
                                options={"headers": {"content-type": "application/json",
                                                     "content-length": str(body.size)}})
            assert batch.request_counts.processing + batch.request_counts.succeeded == len(requests)
        finally:
            client.close()


@pytest.mark.parametrize("size", [1, 2])
def test_small_bodies_are_one_chunk(size):
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    requests = _requests(builder, n=size + 3)[:size]
    body = builder.batch_body_stream(requests)
    assert len(list(body)) == 1 and body.size == len(bytes(body))


def test_a_sealed_work_opens_to_the_same_work_and_weighs_the_same():
    from transforms.batches.route import open_work, seal_work
    from transforms.process import _weigh_request
    from transforms.prompts.requests import SealedWork
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    recs = tuple(Record(f"id-{i}", "k", f"t{i}") for i in range(3))
    single, pack = builder.single(recs[0]), (builder.pack(recs), recs)
    for work in (single, pack):
        sealed = seal_work(work)
        assert isinstance(sealed, SealedWork) and isinstance(sealed.pickled, bytes)
        assert open_work(sealed) == work
        assert _weigh_request(sealed) == _weigh_request(work)
        assert open_work(work) is work  # unsealed works pass as they are
        # Plain tuples inside: no class for every load to look up (an import each time).
        assert not [op for op, _, _ in pickletools.genops(sealed.pickled) if "GLOBAL" in op.name]


def test_a_keyed_sealed_work_crosses_the_shuffle_with_its_own_deterministic_coder():
    import apache_beam as beam

    from transforms.batches.route import open_work, seal_work
    from transforms.process import _KEYED_WORK, SealedWorkCoder
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    sealed = seal_work(builder.single(Record("id-1", "k", "t1")))
    from apache_beam.typehints.native_type_compatibility import convert_to_beam_type
    coder = beam.coders.registry.get_coder(convert_to_beam_type(_KEYED_WORK))  # as with_output_types does
    assert coder.is_deterministic()
    assert isinstance(coder.coders()[1], SealedWorkCoder)
    encoded = coder.encode((3, sealed))
    assert coder.encode((3, sealed)) == encoded
    shard, back = coder.decode(encoded)
    assert shard == 3 and back == sealed and open_work(back) == open_work(sealed)
    assert pickle.loads(pickle.dumps(sealed)) == sealed  # the batcher's state and the Reshuffle pickle it


def test_a_submitted_batch_without_its_requests_loads_them_from_the_requests_file(tmp_path):
    import datetime as dt

    from transforms.batches import lifecycle
    from transforms.batches.route import SubmittedBatch
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    recs = tuple(Record(f"id-{i}", "k", f"t{i}", {"n": i}) for i in range(3))
    requests = [builder.single(recs[0]), builder.pack(recs)]
    records = {r.record_id: r for r in recs}
    path = lifecycle.requests_path(str(tmp_path), "key1")
    lifecycle.write_requests(path, requests, records)
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    light = SubmittedBatch("msgbatch_1", at, (), None, "key1", requests_path=path)
    full = light.loaded()
    assert full == SubmittedBatch("msgbatch_1", at, tuple(requests), records, "key1")
    assert full.loaded() is full
