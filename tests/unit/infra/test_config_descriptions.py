"""The Prefect UI's run form is PipelineConfig's JSON schema: every field needs a description, every section model a
docstring (its schema description), or the form shows a bare name with no help."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field

from llmops.infra.config import PipelineConfig


def _refs(schema: Any) -> list[str]:
    """The $defs names a property's schema points to: directly, or through anyOf/allOf/oneOf, list items (items,
    prefixItems) and dict values (additionalProperties)."""
    if isinstance(schema, list):
        return [name for item in schema for name in _refs(item)]
    if not isinstance(schema, dict):
        return []
    found = [schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else []
    for key in ("anyOf", "allOf", "oneOf", "items", "prefixItems", "additionalProperties"):
        found += _refs(schema.get(key))
    return found


def undocumented(model: type[BaseModel]) -> list[str]:
    """``path: ...`` for every field without a description and every model without a docstring, reachable from
    ``model`` through its JSON schema (nested models, list items, dict values), each model reported once."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    missing: list[str] = []
    seen: set[str] = set()

    def has_text(node: dict) -> bool:
        return bool(str(node.get("description") or "").strip())

    def visit(name: str, node: dict, path: str) -> None:
        if not has_text(node):
            missing.append(f"{path}: model {name} has no docstring")
        for field, prop in node.get("properties", {}).items():
            where = f"{path}.{field}"
            if not has_text(prop):
                missing.append(f"{where}: field {name}.{field} has no description")
            for ref in _refs(prop):
                if ref not in seen:
                    seen.add(ref)
                    visit(ref, defs[ref], where)

    visit(model.__name__, schema, "config")
    return missing


def test_every_field_and_section_of_the_pipeline_config_is_described():
    missing = undocumented(PipelineConfig)
    assert not missing, "the Prefect UI's run form would show these without help:\n  " + "\n  ".join(missing)


class _Item(BaseModel):
    value: int = 1


class _Value(BaseModel):
    value: int = 1


class _Nested(BaseModel):
    value: int = 1


class _Documented(BaseModel):
    """A documented model."""

    items: list[_Item] = Field(default_factory=list, description="Items.")
    by_name: dict[str, _Value] = Field(default_factory=dict, description="Values.")
    maybe: Optional[_Nested] = None
    number: int = Field(0, description="Described.")


def test_the_walk_finds_undescribed_fields_and_undocumented_models_in_items_values_and_optionals():
    missing = set(undocumented(_Documented))
    expected = {"config.maybe: field _Documented.maybe has no description"}
    for field, model in (("items", "_Item"), ("by_name", "_Value"), ("maybe", "_Nested")):
        expected |= {f"config.{field}: model {model} has no docstring",
                     f"config.{field}.value: field {model}.value has no description"}
    assert missing == expected
