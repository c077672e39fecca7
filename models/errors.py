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
    """A configuration value breaks a rule; the message names the dotted field path, the value and the rule.

    ``problems`` keeps each broken rule as (field path, detail), the message being ``"path detail"`` per problem,
    so a loader that knows where each field came from (a YAML file and line) can point at it, and a caller that
    embeds a config under another root (a sweep's ``base.model``) can re-root the paths.
    """

    def __init__(self, message: str, problems: list[tuple[tuple[str, ...], str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    @classmethod
    def from_problems(cls, problems: list[tuple[tuple[str, ...], str]]) -> ConfigError:
        return cls("; ".join(f"{'.'.join(loc)} {detail}" for loc, detail in problems), problems)

    def rerooted(self, old_root: tuple[str, ...], new_root: tuple[str, ...]) -> ConfigError:
        """The same problems with the leading ``old_root`` of each path replaced by ``new_root``."""
        return ConfigError.from_problems(
            [((*new_root, *loc[len(old_root) :]) if loc[: len(old_root)] == old_root else loc, detail)
             for loc, detail in self.problems]
        )
