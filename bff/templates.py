"""Jinja2 rendering for the BFF's own pages (autoescaped, from the package)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(loader=PackageLoader("bff", "templates"), autoescape=select_autoescape(["html"]))


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)
