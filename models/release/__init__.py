"""Release: the registry (versions, aliases), model cards, and registering, smoke-testing and promoting a version."""
from llmops.models.release.card import compression_section, gate_slices_table
from llmops.models.release.registry import ALIASES, LoadedModel, Registry, RegistryError
from llmops.models.release.stage import register_candidate, release, smoke_test

__all__ = [
    "ALIASES", "LoadedModel", "Registry", "RegistryError", "compression_section", "gate_slices_table",
    "register_candidate", "release", "smoke_test",
]
