"""The OpenAPI document, corrected where FastAPI's defaults would not match the answers.

FastAPI documents a 422 on every route that takes parameters as its own
`HTTPValidationError` (`detail` an array of objects). This API answers every 422 as
`{"detail": "<field>: <problem>"}` (api.errors), so wherever that default is left, it
is replaced by the real body (api.schemas.ErrorOut).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

_DEFAULT_422 = "#/components/schemas/HTTPValidationError"
_ERROR_OUT = "#/components/schemas/ErrorOut"


def _uses_default_422(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == _DEFAULT_422


def truthful_openapi(app: FastAPI) -> None:
    """Make app.openapi() return the document with every 422 as it is really sent."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                response = operation.get("responses", {}).get("422")
                if response is not None and _uses_default_422(response):
                    operation["responses"]["422"] = {
                        "description": "a value the API refuses: the detail names the field and the problem",
                        "content": {"application/json": {"schema": {"$ref": _ERROR_OUT}}},
                    }
        components = schema.get("components", {}).get("schemas", {})
        if _ERROR_OUT.rsplit("/", 1)[1] in components and _DEFAULT_422 not in str(schema.get("paths")):
            # Nothing refers to FastAPI's validation models any more.
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
