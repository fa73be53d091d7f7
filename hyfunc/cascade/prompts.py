"""Prompt text for the LML (intent) and the LMS (parameter writer).

With a tokenizer that has a chat template (ChatML, Gemma's turns, ...) the prompts are rendered by
that template, so a pretrained checkpoint sees the turn markup it was tuned on. A tokenizer without
one (the demo models' own BPE) gets the exact ChatML text the demo models were trained with.

The LMS prompt is split so that the part every job shares (the turn opening and the system
instructions) is a token prefix whose KV is computed once per process; everything job-specific
(candidate schemas, the query, the soft-token slots, the answer start) follows it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from hyfunc.models.soft_slot import SOFT_TOKEN
from hyfunc.schema import Tool

INTENT_SYSTEM = "You turn a user's request into function calls. Read the request."

LMS_SYSTEM = (
    "You are a function-calling assistant. Answer with one or more tool calls in "
    "<tool_call></tool_call> tags, using only the tools below."
)


_MARKUP = re.compile(r"<(?=\|)|<(?=/?(?:tool_call|tool_response|think)>)")


def plain(text: str, specials: tuple[str, ...] = ()) -> str:
    """User-supplied text (queries, tool names and descriptions) as plain text: special-token markup
    in it is broken with a zero-width space, so the tokenizer never reads it as a special token.
    A literal "<|soft|>" would otherwise claim a soft-token slot and fail the whole batch, and
    "<|im_end|>" would end the user turn. ``specials`` adds a tokenizer's own special tokens (e.g.
    Gemma's "<end_of_turn>"). Text without such markup is unchanged."""
    text = _MARKUP.sub("<\u200b", text)
    for token in specials:
        if len(token) > 1 and token in text:
            text = text.replace(token, token[0] + "\u200b" + token[1:])
    return text


# -- chat templates -------------------------------------------------------------------------------------

# Private-use characters: they survive any template (no trimming or escaping touches them) and never
# occur in rendered markup, so the rendered text can be cut at them.
_SCHEMAS = "\ue000schemas\ue000"
_QUERY = "\ue000query\ue000"
_SLOTS = re.compile("\ue000(schemas|query)\ue000")


@dataclass(frozen=True)
class ChatFormat:
    """One tokenizer's chat template, pre-rendered around placeholders.

    ``lms_prefix`` is everything before the first job-specific text; ``lms_job`` and ``intent`` hold
    the placeholders that each job fills in."""

    lms_prefix: str
    lms_job: str
    intent: str
    specials: tuple[str, ...]


def _render(template: str, special_map: dict[str, str], system: str, user: str) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    conversation = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        rendered, _ = render_jinja_template(
            conversations=[conversation], chat_template=template, add_generation_prompt=True, **special_map
        )
    except Exception:  # noqa: BLE001 -- templates raise their own errors for a system role (Gemma 1/2)
        merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
        rendered, _ = render_jinja_template(
            conversations=[merged], chat_template=template, add_generation_prompt=True, **special_map
        )
    return rendered[0]


@lru_cache(maxsize=16)
def _chat_format(template: str, special_items: tuple[tuple[str, str], ...], specials: tuple[str, ...]) -> ChatFormat:
    special_map = dict(special_items)
    lms = _render(template, special_map, f"{LMS_SYSTEM}\n<tools>\n{_SCHEMAS}\n</tools>", _QUERY)
    cut = min(i for i in (lms.find(_SCHEMAS), lms.find(_QUERY)) if i >= 0) if (_SCHEMAS in lms and _QUERY in lms) else -1
    if cut < 0:
        raise ValueError("the tokenizer's chat template drops the system or the user message; it cannot frame LMS prompts")
    intent = _render(template, special_map, INTENT_SYSTEM, _QUERY)
    if _QUERY not in intent:
        raise ValueError("the tokenizer's chat template drops the user message; it cannot frame intent prompts")
    return ChatFormat(lms[:cut], lms[cut:], intent, specials)


def chat_format(tokenizer) -> ChatFormat | None:
    """The tokenizer's chat format, or None when it has no chat template (then: the legacy ChatML text)."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not template or not isinstance(template, str):
        return None
    special_map = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    specials = tuple(sorted({t for t in tokenizer.all_special_tokens if t != SOFT_TOKEN}, key=len, reverse=True))
    return _chat_format(template, tuple(sorted(special_map.items())), specials)


def _fill(text: str, values: dict[str, str]) -> str:
    # One pass, so a query that happens to contain a placeholder cannot be substituted twice.
    return _SLOTS.sub(lambda m: values[m.group(1)], text)


# -- the prompts -----------------------------------------------------------------------------------------


def intent_prompt(query: str, tokenizer=None) -> str:
    """LML prompt: system + query, never the tool library; the answer would begin at the end."""
    fmt = chat_format(tokenizer)
    if fmt is not None:
        return _fill(fmt.intent, {"query": plain(query, fmt.specials), "schemas": ""})
    return (
        f"<|im_start|>system\n{INTENT_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{plain(query)}<|im_end|>\n<|im_start|>assistant\n"
    )


def tool_text(tool: Tool) -> str:
    """The text a function embedding is pooled over: name, description, parameters."""
    params = tool.function.parameters.properties or {}
    parts = [f"{tool.name}: {tool.function.description}".strip()]
    for name, schema in params.items():
        kind = schema.type or "any"
        desc = f" - {schema.description}" if schema.description else ""
        parts.append(f"{name} ({kind}){desc}")
    return plain("\n".join(parts))


def lms_shared_prefix(tokenizer=None) -> str:
    """The LMS prompt prefix shared by every job (its KV is reused across batches)."""
    fmt = chat_format(tokenizer)
    if fmt is not None:
        return fmt.lms_prefix
    return f"<|im_start|>system\n{LMS_SYSTEM}\n<tools>\n"


def _type_signature(schema) -> str:
    if schema.enum is not None:
        return "|".join(json.dumps(v, ensure_ascii=False) for v in schema.enum)
    if schema.type == "array":
        return f"array[{_type_signature(schema.items)}]" if schema.items is not None else "array"
    if schema.type == "object" and schema.properties:
        inner = ", ".join(
            f"{name}{'' if name in (schema.required or []) else '?'}: {_type_signature(sub)}"
            for name, sub in schema.properties.items()
        )
        return "{" + inner + "}"
    return schema.type or "any"


def compact_schema(tool: Tool) -> str:
    """One line per tool: name, description, and each parameter's type, enum and whether it is
    optional (`?`). The LMS only needs what it must fill in; the full JSON Schema would triple
    the prompt, and every prompt token is prefill time."""
    params = tool.function.parameters
    signature = _type_signature(params) if params.properties else "{}"
    description = tool.function.description.split(". ")[0].strip().rstrip(".")
    return f"{tool.name}{signature} - {description}" if description else f"{tool.name}{signature}"


def lms_job_prompt(query: str, candidates: list[Tool], soft_tokens: int, tokenizer=None) -> str:
    """Job-specific LMS prompt: candidate schemas, the query, the soft-token slots, the answer start.

    The slots follow the query inside the user turn, for every tokenizer, in training and inference."""
    fmt = chat_format(tokenizer)
    if fmt is not None:
        schemas = plain("\n".join(compact_schema(t) for t in candidates), fmt.specials)
        user = plain(query, fmt.specials) + SOFT_TOKEN * soft_tokens
        return _fill(fmt.lms_job, {"schemas": schemas, "query": user})
    schemas = plain("\n".join(compact_schema(t) for t in candidates))
    return (
        f"{schemas}\n</tools><|im_end|>\n"
        f"<|im_start|>user\n{plain(query)}{SOFT_TOKEN * soft_tokens}<|im_end|>\n<|im_start|>assistant\n"
    )


PROMPT_ORDERS = ("canonical", "retrieval")


def canonical_order(tools: list[Tool]) -> list[Tool]:
    """Candidates sorted by content hash: the same set always renders as the same token run."""
    return sorted(tools, key=lambda tool: tool.content_hash())


def lms_job_ids(tokenizer, query: str, candidates: list[Tool], soft_tokens: int, order: str = "canonical") -> list[int]:
    """The job's LMS prompt as token ids: the one encoder the engine, training and the benches use.

    `order` is `cascade.prompt_order`: "canonical" renders the schemas sorted by content hash, so
    jobs with the same candidates share a token prefix the prefix cache reuses; "retrieval" keeps
    them best first (what the demo LMS was trained on). The template program keeps the retrieval
    order either way."""
    if order not in PROMPT_ORDERS:
        raise ValueError(f"prompt order {order!r}: expected one of {', '.join(PROMPT_ORDERS)}")
    shown = canonical_order(candidates) if order == "canonical" else list(candidates)
    return tokenizer.encode(lms_job_prompt(query, shown, soft_tokens, tokenizer=tokenizer), add_special_tokens=False)
