"""From a validated request body to a Message: shared by Messages and batches.

Keeps validation, token accounting, caching and answer building in one
place so a record is answered and billed the same way in every mode.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

from emulator import answers, prompts
from emulator import models as model_table
from emulator.models import ModelInfo
from emulator.cache import Breakpoints, CachePlan
from emulator.memo import IdentityMemo
from emulator.tokenizer import messages_tokens, shared_request_tokens


class ApiError(Exception):
    """An error the API would answer with: status, error.type, message."""

    def __init__(self, status: int, etype: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.etype = etype
        self.message = message
        self.headers = dict(headers or {})


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


#: The last output_config found valid: a batch's requests share one object, checked once.
_valid_output_config: List[Any] = [None]

#: Top-level fields of a Messages body (the API's and SDK 2.14's MessageCreateParams;
#: `stream` is known, and refused below). No temperature/top_p/top_k: the API notes
#: (and SDK 2.14) have none, so they are extra inputs like any other unknown field.
MESSAGES_FIELDS = frozenset((
    "model", "max_tokens", "messages", "system", "stop_sequences", "metadata", "tools", "tool_choice",
    "thinking", "service_tier", "cache_control", "output_config", "container", "diagnostics",
    "inference_geo", "speed", "stream"))
#: Those of a count_tokens body (MessageCountTokensParams): no max_tokens, metadata,
#: stop_sequences, service_tier, stream...
COUNT_TOKENS_FIELDS = frozenset((
    "model", "messages", "system", "tools", "tool_choice", "thinking", "cache_control", "output_config",
    "speed"))


def not_found_model(model: str) -> ApiError:
    return ApiError(404, "not_found_error", f"model: {model}")


def validate_params(params: Any, *, in_batch: bool = False, count_tokens: bool = False,
                    prefix: str = "", models: Optional[Mapping[str, Any]] = None) -> ModelInfo:
    """Raise ApiError with a pydantic-style message for a bad request body, as the
    API does: 400 invalid_request_error, or 404 not_found_error for an unknown
    model. Returns the model's entry of the table (emulator.models); `models` is
    the config's additions to it."""
    if not isinstance(params, dict):
        raise invalid(f"{prefix or 'body'}: Input should be a valid dictionary")
    p = prefix
    fields = COUNT_TOKENS_FIELDS if count_tokens else MESSAGES_FIELDS
    if not fields.issuperset(params):
        extra = next(k for k in params if k not in fields)
        raise invalid(f"{p}{extra}: Extra inputs are not permitted")
    model = params.get("model")
    if model is None:
        raise invalid(f"{p}model: Field required")
    if not isinstance(model, str) or not model:
        raise invalid(f"{p}model: Input should be a valid non-empty string")
    mt = None
    if not count_tokens:
        mt = params.get("max_tokens")
        if mt is None:
            raise invalid(f"{p}max_tokens: Field required")
        if type(mt) is not int and (isinstance(mt, bool) or not isinstance(mt, int)):  # (an int: one test)
            raise invalid(f"{p}max_tokens: Input should be a valid integer")
        if mt < 1:
            raise invalid(f"{p}max_tokens: Input should be greater than or equal to 1")
    messages = params.get("messages")
    if messages is None:
        raise invalid(f"{p}messages: Field required")
    if not isinstance(messages, list) or not messages:
        raise invalid(f"{p}messages: List should have at least 1 item after validation")
    for m in messages:  # valid messages, the usual case, without enumerate()
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            _invalid_message(p, messages)
        content = m.get("content")
        if not content or type(content) is not str and not _content_ok(content):
            _invalid_message(p, messages)
    system = params.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise invalid(f"{p}system: Input should be a valid string or list of text blocks")
    oc = params.get("output_config")
    if oc is not None and oc is not _valid_output_config[0]:
        fmt = oc.get("format") if isinstance(oc, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" \
                and not isinstance(fmt.get("schema"), dict):
            raise invalid(f"{p}output_config.format.schema: Input should be a valid dictionary")
        _valid_output_config[0] = oc  # (held, so its id is not reused)
    if params.get("stream"):
        if in_batch:
            raise invalid(f"{p}stream: Streaming is not supported in Message Batches")
        raise invalid(f"{p}stream: streaming responses are not supported by this emulator")
    info = model_table.lookup(model, models)
    if info is None:
        raise not_found_model(model)
    if mt is not None and mt > info.max_output_tokens:
        raise invalid(f"{p}max_tokens: {mt} > {info.max_output_tokens}, which is the maximum allowed "
                      f"number of output tokens for {model}")
    return info


def check_context(tokens: int, info: ModelInfo) -> None:
    """400 for a prompt longer than the model's context window, as the API answers."""
    if tokens > info.context_window:
        raise invalid(f"prompt is too long: {tokens} tokens > {info.context_window} maximum")


_ROLES = ("user", "assistant")


def _content_ok(content: Any) -> bool:
    """A non-empty list content: its text blocks have text (a string content is checked by the caller)."""
    if not isinstance(content, list):
        return False
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text" and not block.get("text"):
            return False
    return True


def _invalid_message(p: str, messages: List[Any]) -> None:
    """Raise the error of the first invalid message (validate_params found one)."""
    last = len(messages) - 1
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"{p}messages.{i}: Input should be a valid dictionary")
        role = m.get("role")
        if role not in _ROLES:
            raise invalid(f"{p}messages.{i}.role: Input should be 'user' or 'assistant'")
        content = m.get("content")
        if not isinstance(content, (str, list)):
            raise invalid(f"{p}messages.{i}.content: Input should be a valid string or list")
        if not content:
            if role == "assistant" and i == last:
                continue  # the optional final assistant message may be empty
            raise invalid(f"{p}messages.{i}: all messages must have non-empty content except for "
                          f"the optional final assistant message")
        if isinstance(content, list) and not _content_ok(content):
            raise invalid(f"{p}messages.{i}: text content blocks must be non-empty")


@dataclasses.dataclass
class Prepared:
    params: Mapping[str, Any]
    model: str
    is_pack: bool
    items: List[prompts.Item]
    ids: List[str]
    total_tokens: int
    cache: CachePlan

    @property
    def billable_input(self) -> int:
        """What the ITPM bucket is charged: everything but cache reads."""
        return self.total_tokens - self.cache.read


def _shared_tokens(system: Any, output_config: Any) -> int:
    """shared_request_tokens of params holding these two values."""
    params = {}
    if system is not None:
        params["system"] = system
    if output_config is not None:
        params["output_config"] = output_config
    return shared_request_tokens(params)


def parse_request(params: Mapping[str, Any]) -> Tuple[bool, List[prompts.Item]]:
    return prompts.parse_items(prompts.user_text(params))


class Engine:
    """Answers requests with the state's config, cache, faults and stats."""

    def __init__(self, state):
        self.state = state
        self._shared_tokens = IdentityMemo(_shared_tokens)
        # (model, system, output_config, config, what _shared found for them)
        self._last_shared: Tuple[Any, ...] = (None, None, None, None, None)

    def _shared(self, model: str, system: Any, output_config: Any) -> Tuple[int, Breakpoints]:
        """(shared_request_tokens, cache breakpoints) of these params values under the
        current config. A batch's requests share these objects (BatchStore.create), so
        the last request's are checked first: four `is` instead of two memo lookups."""
        cfg = self.state.config
        last = self._last_shared
        if last[0] is model and last[1] is system and last[2] is output_config and last[3] is cfg:
            return last[4]
        found = (self._shared_tokens(system, output_config),
                 self.state.cache.breakpoints(model, system, cfg.min_cacheable_tokens, cfg.time_scale))
        self._last_shared = (model, system, output_config, cfg, found)
        return found

    def _input(self, params: Mapping[str, Any]) -> Tuple[str, CachePlan, int]:
        """(model, cache plan, input tokens) of a request."""
        model = params["model"]
        shared_tokens, breakpoints = self._shared(model, params.get("system"), params.get("output_config"))
        plan = self.state.cache.plan_for(breakpoints)
        # estimate_request_tokens(params), its shared part counted once per instructions object
        return model, plan, shared_tokens + messages_tokens(params)

    def prepare(self, params: Mapping[str, Any],
                parsed: Optional[Tuple[bool, List[prompts.Item]]] = None,
                info: Optional[ModelInfo] = None) -> Prepared:
        """`info` (validate_params' answer): a prompt past its context window is refused."""
        is_pack, items = parsed if parsed is not None else parse_request(params)
        model, plan, tokens = self._input(params)
        if info is not None:
            check_context(tokens, info)
        return Prepared(params, model, is_pack, items, [i.id for i in items if i.id is not None], tokens, plan)

    def complete(self, prep: Prepared, tier: str) -> Tuple[answers.Answer, Dict[str, Any]]:
        """Commit the cache, build the answer (pack faults apply) and its usage."""
        self.state.cache.commit(prep.cache)
        answer = answers.build_answer(prep.params, prep.is_pack, prep.items, self.state.faults, ids=prep.ids)
        for name in answer.faults:
            self.state.stats.fault(name)
        return answer, _usage(prep.total_tokens, prep.cache, answer.output_tokens, tier)

    def answer_single(self, params: Mapping[str, Any], item: prompts.Item, tier: str,
                      info: Optional[ModelInfo] = None
                      ) -> Tuple[str, str, str, Dict[str, Any], List[str], List[str]]:
        """prepare() then complete() of a request holding one record (not a pack, so
        no pack faults): (model, text, stop_reason, usage, ids, answered ids). The
        same steps without the Prepared and Answer objects: a pipeline's batch is
        tens of thousands of such requests, and they were ~8% of the work."""
        model, plan, tokens = self._input(params)
        if info is not None:
            check_context(tokens, info)
        self.state.cache.commit(plan)
        text, stop, out_tokens = answers.single_answer(params, item)
        ids = [item.id] if item.id is not None else []
        answered = [] if stop == "max_tokens" else ids
        return model, text, stop, _usage(tokens, plan, out_tokens, tier), ids, answered


def _usage(total_tokens: int, plan: CachePlan, output_tokens: int, tier: str) -> Dict[str, Any]:
    return {
        "input_tokens": total_tokens - plan.read - plan.create,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": plan.create,
        "cache_read_input_tokens": plan.read,
        "service_tier": tier,
    }


def message_body(msg_id: str, model: str, answer_text: str, stop_reason: str,
                 usage: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer_text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": dict(usage),
    }
