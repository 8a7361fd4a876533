"""The task: what to ask Claude about each record, described once in YAML."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml

from transforms.records import Record

#: Output tokens budgeted per item in a pack when the task does not say.
DEFAULT_ITEM_OUTPUT_TOKENS = 150


class TaskError(ValueError):
    """The task file is unusable; the message says which field and why."""


class TemplateError(ValueError):
    """A record lacks a field the prompt template needs."""


@dataclasses.dataclass(frozen=True)
class Task:
    """Instructions, template, model and output shape of a job.

    system:         instructions shared by every request (cached when long).
    template:       per-record prompt, Python format syntax over the record's
                    fields: {text}, {id}, {pack_key} and any input column.
    output_schema:  JSON schema of one answer (an object); None for free text.
    """

    model: str
    system: str
    template: str = "{text}"
    max_tokens: int = 1024
    output_schema: Optional[Mapping[str, Any]] = None
    item_output_tokens: int = DEFAULT_ITEM_OUTPUT_TOKENS
    name: str = "task"
    #: The input's names of the text and id fields (--text-field, --id-field; not
    #: task-file keys): the template may use them as well as {text} and {id}.
    text_field: str = "text"
    id_field: str = "id"

    def __post_init__(self):
        if not self.model:
            raise TaskError("task: 'model' is required")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise TaskError(f"task: 'max_tokens' must be a positive integer, got {self.max_tokens!r}")
        if self.output_schema is not None and self.output_schema.get("type") != "object":
            raise TaskError("task: 'output_schema' must be a JSON schema of type 'object'")
        if self.output_schema is not None and "id" in (self.output_schema.get("properties") or {}):
            raise TaskError("task: 'output_schema' must not define 'id': packed answers use it to "
                            "carry each record's id")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as e:
            raise TaskError(f"task: 'template' is not a valid format string: {e}") from e
        if any(not f for f in fields):
            raise TaskError("task: 'template' has an empty placeholder {}; name the field, e.g. {text}")

    @property
    def prompt_sha256(self) -> str:
        """Hash of everything that shapes the prompt: provenance of each row."""
        canonical = json.dumps(
            {"system": self.system, "template": self.template, "output_schema": self.output_schema},
            sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def template_fields(self) -> Tuple[str, ...]:
        """The record fields the template names ({a.b} and {a[0]} name field a)."""
        names = []
        for _, field, _, _ in string.Formatter().parse(self.template):
            if field is not None:
                root = re.split(r"[.\[]", field, maxsplit=1)[0]
                if root not in names:
                    names.append(root)
        return tuple(names)

    def fields_of(self, record: Record) -> Dict[str, Any]:
        """What the template can use for `record`: its other input fields, the text
        and id under their own input names too (--text-field body: {body}), and
        {text}, {id}, {pack_key}."""
        fields = dict(record.attrs)
        fields[self.text_field] = record.text
        fields[self.id_field] = record.record_id
        fields.update(text=record.text, id=record.record_id, pack_key=record.pack_key)
        return fields

    def render(self, record: Record) -> str:
        """The per-record prompt; raises TemplateError on a missing field."""
        fields = self.fields_of(record)
        try:
            return self.template.format_map(fields)
        except (KeyError, IndexError, AttributeError) as e:
            raise TemplateError(f"template needs field {e} which record {record.record_id!r} lacks") from e

    def with_overrides(self, **overrides: Any) -> "Task":
        """A copy with the non-None overrides applied (command-line flags)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self


#: Keys of a task file (text_field/id_field come from the job's flags, not the file).
_KNOWN_KEYS = ({f.name for f in dataclasses.fields(Task)} - {"text_field", "id_field"}) | {"instructions"}


def load_task(path: str) -> Task:
    """Read a task YAML file (local or gs://) into a Task, with clear errors."""
    from apache_beam.io.filesystems import FileSystems  # lazy: keeps Task importable without Beam

    try:
        with FileSystems.open(path) as f:
            data = yaml.safe_load(f.read().decode("utf-8"))
    except (OSError, IOError) as e:
        raise TaskError(f"cannot read task file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise TaskError(f"task file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise TaskError(f"task file {path} must hold a mapping of fields")
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise TaskError(f"task file {path}: unknown field(s) {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}")
    if "instructions" in data:
        data["system"] = data.pop("instructions")
    if "system" not in data:
        raise TaskError(f"task file {path}: 'instructions' (the system prompt) is required")
    if data.get("output_schema") is not None:
        check_output_schema(data["output_schema"], path)
    try:
        return Task(**data)
    except TaskError as e:
        raise TaskError(f"{path}: {str(e).removeprefix('task: ')}") from e


def check_output_schema(schema: Any, path: str = "task") -> None:
    """Check `schema` against the metaschema of its own draft ($schema, else
    Draft 2020-12, as the answers are validated), so a `type: strng` fails when
    the task is loaded, not on the first answer after paying for it. The message
    names the file and the key path (output_schema.properties.score.type)."""
    import jsonschema
    from jsonschema.validators import validator_for

    if not isinstance(schema, Mapping):
        raise TaskError(f"{path}: output_schema must be a mapping (a JSON schema), "
                        f"not {type(schema).__name__}")
    try:
        cls = validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = ".".join(["output_schema", *(str(p) for p in e.absolute_path)])
        raise TaskError(f"{path}: {where}: {e.message}") from e
