"""What every configuration section shares: frozen models, the run-id markers, errors, ``a.b=value`` overrides."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class RunIdRule:
    """How a field enters the id of a training run (``llmops.models.training.run_id``), marked on the field itself.

    A field with no rule is hashed as it is. ``Annotated[type, EXECUTION_ONLY]`` marks a field
    that changes how a run executes but not what it computes (threads, kernels, the launcher):
    never hashed, so changing it resumes the same run. The other two rules keep run ids stable
    across upgrades: ``ADDED_LATER`` (hashed only when not at its default) for a field that did not
    exist when ids were first issued, ``pinned(old)`` (always hashed as ``old``) for a field found
    execution-only after ids were issued with it.
    """

    rule: Literal["execution_only", "omitted_at_default", "pinned"]
    value: Any = None


EXECUTION_ONLY = RunIdRule("execution_only")
ADDED_LATER = RunIdRule("omitted_at_default")


def pinned(old_default: Any) -> RunIdRule:
    return RunIdRule("pinned", old_default)


class ConfigError(ValueError):
    """A configuration that does not validate; the message names the source and each bad field."""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` strings (values parsed as YAML) to a nested dict copy."""
    result = yaml.safe_load(yaml.safe_dump(raw))  # deep copy through plain types
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"override {item!r} must look like section.field=value")
        node = result
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as exc:  # e.g. an unclosed list: an error naming the override, not a traceback
            why = getattr(exc, "problem", None) or exc
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({why})") from None
    return result


def explain(exc: ValidationError, source: str) -> str:
    """One line per invalid field: where it is, what is wrong, what was given."""
    lines = [f"{source}: {exc.error_count()} invalid field(s)"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
