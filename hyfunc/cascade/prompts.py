"""Prompt text for the LML (intent) and the LMS (parameter writer), ChatML as Qwen uses it.

The LMS prompt is split so that the part every job shares (the system instructions) is a
token prefix whose KV is computed once per process; everything job-specific follows it.
"""

from __future__ import annotations

import json
import re

from hyfunc.schema import Tool

SOFT_TOKEN = "<|soft|>"  # the soft-token slot: its input embedding is the projected LML soft token

INTENT_SYSTEM = "You turn a user's request into function calls. Read the request."

LMS_SYSTEM = (
    "You are a function-calling assistant. Answer with one or more tool calls in "
    "<tool_call></tool_call> tags, using only the tools below."
)


_MARKUP = re.compile(r"<(?=\|)|<(?=/?(?:tool_call|tool_response|think)>)")


def plain(text: str) -> str:
    """User-supplied text (queries, tool names and descriptions) as plain text: special-token markup
    in it is broken with a zero-width space, so the tokenizer never reads it as a special token.
    A literal "<|soft|>" would otherwise claim a soft-token slot and fail the whole batch, and
    "<|im_end|>" would end the user turn. Text without such markup is unchanged."""
    return _MARKUP.sub("<\u200b", text)


def intent_prompt(query: str) -> str:
    """LML prompt: system + query, never the tool library; the answer would begin at the end."""
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


def lms_shared_prefix() -> str:
    """The LMS prompt prefix shared by every job (its KV is reused across batches)."""
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


def lms_job_prompt(query: str, candidates: list[Tool], soft_tokens: int) -> str:
    """Job-specific LMS prompt: candidate schemas, the query, the soft-token slots, the answer start."""
    schemas = plain("\n".join(compact_schema(t) for t in candidates))
    return (
        f"{schemas}\n</tools><|im_end|>\n"
        f"<|im_start|>user\n{plain(query)}{SOFT_TOKEN * soft_tokens}<|im_end|>\n<|im_start|>assistant\n"
    )
