"""Built-in sandbox providers (fake CRM, accounting and bank apps) for demos and tests."""

from __future__ import annotations

from .app import create_sandbox_app
from .options import SandboxOptions

__all__ = ["SandboxOptions", "create_sandbox_app"]
