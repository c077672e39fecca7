"""The project's exception hierarchy.

One root (`LadderError`) so callers can catch everything mhc-ladder raises on purpose; `ConfigError` is a
`ValueError` because bad configuration is bad user input. Lives in models/ because it is the lowest package
that raises them; orchestrator/ re-exports it.
"""

from __future__ import annotations

__all__ = ["ConfigError", "LadderError"]


class LadderError(Exception):
    """Root of every error mhc-ladder raises deliberately."""


class ConfigError(LadderError, ValueError):
    """A configuration value breaks a rule; the message names the dotted field path, the value and the rule."""
