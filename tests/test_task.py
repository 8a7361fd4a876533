import pytest

from transforms.records import Record
from transforms.prompts.task import Task, TaskError, TemplateError, load_task


def test_sample_task_loads_and_hash_is_stable():
    task = load_task("samples/sentiment.yaml")
    assert task.model
    assert task.output_schema["type"] == "object"
    assert task.prompt_sha256 == load_task("samples/sentiment.yaml").prompt_sha256
    assert len(task.prompt_sha256) == 64


def test_hash_changes_with_instructions():
    a = Task(model="m", system="be brief")
    assert a.prompt_sha256 != Task(model="m", system="be verbose").prompt_sha256
    assert a.prompt_sha256 == a.with_overrides(model="other").prompt_sha256  # model is its own column


def test_render_uses_fields_and_reports_missing_ones():
    task = Task(model="m", system="s", template="From {customer_id}: {text}")
    rec = Record("r1", "c", "hello", {"customer_id": "c9"})
    assert task.render(rec) == "From c9: hello"
    with pytest.raises(TemplateError, match="customer_id"):
        task.render(Record("r2", "c", "hello", {}))


@pytest.mark.parametrize("kwargs,match", [
    ({"model": ""}, "model"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"output_schema": {"type": "array"}}, "output_schema"),
    ({"template": "{"}, "template"),
    ({"template": "{} text"}, "empty placeholder"),
])
def test_invalid_tasks_are_refused(kwargs, match):
    args = {"model": "m", "system": "s", **kwargs}
    with pytest.raises(TaskError, match=match):
        Task(**args)


def test_task_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("model: m\ninstructions: hi\ncolour: blue\n")
    with pytest.raises(TaskError, match="colour"):
        load_task(str(bad))
    bad.write_text("model: m\n")
    with pytest.raises(TaskError, match="instructions"):
        load_task(str(bad))
    with pytest.raises(TaskError, match="cannot read"):
        load_task(str(tmp_path / "missing.yaml"))
