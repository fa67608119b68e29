"""Every answer the in-process tests get is checked against /openapi.json (DESIGN §16).

:func:`check_answers` is an httpx response hook: it finds the operation of the request's method
and path, the answer described for the status (or ``default``, the error shape), and validates
the JSON body against that schema; and a JSON body the server took (2xx) against the operation's
request body. So every API test is also a test that the document says what the server answers
and takes; a mismatch fails the test that met it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from starlette.applications import Starlette

from bff.openapi import _walk, build_spec

_TEMPLATE = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)}")


class AnswerMismatch(AssertionError):
    pass


class Contract:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.routes: list[tuple[re.Pattern[str], str]] = []
        for path in spec["paths"]:
            if path.startswith("/sandbox/"):
                continue  # the fake providers' answers are theirs
            # A path parameter is one segment, but the proxy's {path} is the rest of the URL.
            pattern = _TEMPLATE.sub(lambda m: "(.+)" if m.group(1) == "path" else "([^/]+)", path)
            self.routes.append((re.compile(f"^{pattern}/?$"), path))
        # More literal text first: /api/server/{id}/sync before /api/server/{id}.
        self.routes.sort(key=lambda route: -len(_TEMPLATE.sub("", route[1])))
        self.validators: dict[str, Any] = {}

    def operation(self, method: str, url_path: str) -> tuple[str, dict[str, Any]] | None:
        for pattern, path in self.routes:
            if pattern.match(url_path):
                found = self.spec["paths"][path].get(method.lower())
                return (path, found) if found is not None else None
        return None

    def validator(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        if key not in self.validators:
            self.validators[key] = Draft202012Validator({"components": self.spec["components"], **schema})
        return self.validators[key]

    def check(self, method: str, url_path: str, status: int, content_type: str, body: bytes) -> None:
        found = self.operation(method, url_path)
        if found is None or status in (304,) or not body:
            return  # unknown routes answer 404/405 in the error shape; checked below when JSON
        path, operation = found
        answers = operation["responses"]
        answer = answers.get(str(status)) or answers.get("default")
        if answer is None:
            raise AnswerMismatch(f"{method} {path} answered {status}, which the document does not describe")
        media = answer.get("content", {}).get("application/json")
        if media is None or not content_type.startswith("application/json"):
            return
        errors = self.errors(media["schema"], json.loads(body))
        if errors:
            raise AnswerMismatch(f"{method} {path} {status} does not match the document: {errors[:5]}")

    def check_accepted_body(self, method: str, url_path: str, status: int, content_type: str, body: bytes) -> None:
        """A JSON body the server took (2xx) must be one the document allows: the document is not stricter."""
        found = self.operation(method, url_path)
        if found is None or not 200 <= status < 300 or not body or not content_type.startswith("application/json"):
            return
        path, operation = found
        media = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if media is None:
            raise AnswerMismatch(f"{method} {path} took a JSON body, which the document does not describe")
        errors = self.errors(media["schema"], json.loads(body))
        if errors:
            raise AnswerMismatch(f"{method} {path} took a body the document refuses: {errors[:5]}")

    def errors(self, schema: dict[str, Any], value: Any) -> list[str]:
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in self.validator(schema).iter_errors(value)
        ]


def contract_for(app: Starlette) -> Contract:
    """One document per set of routes (with or without the sandbox), built once per session."""
    routes = tuple(sorted((path, frozenset(route.methods or ())) for path, route in _walk(app.routes)))
    if routes not in _BUILT:
        _BUILT[routes] = Contract(build_spec(app.routes))
    return _BUILT[routes]


_BUILT: dict[tuple[tuple[str, frozenset[str]], ...], Contract] = {}


def check_answers(app: Starlette) -> Callable[[httpx.Response], Awaitable[None]]:
    contract = contract_for(app)

    async def hook(response: httpx.Response) -> None:
        await response.aread()
        contract.check(
            response.request.method,
            response.request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
            response.content,
        )
        request = response.request
        contract.check_accepted_body(
            request.method,
            request.url.path,
            response.status_code,
            request.headers.get("content-type", ""),
            request.content if isinstance(request.stream, httpx.ByteStream) else b"",
        )

    return hook
