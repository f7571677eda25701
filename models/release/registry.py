"""The model registry in the artifact store: numbered versions, aliases (production, staging), promotion, rollback."""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Union

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmops.infra.store import ArtifactNotFound, ArtifactStore
from llmops.models.model.loading import load_model
from llmops.models.records import ModelVersionRef, VersionManifest, VersionMetadata

log = logging.getLogger("llmops.registry")

ALIASES = ("production", "staging")


class RegistryError(LookupError):
    """A version or alias that does not exist, or an operation the registry's state does not allow."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    version: int
    variant: str
    manifest: VersionManifest


class Registry:
    """``models/<name>/versions/<n>/`` (a version exists once its manifest.json does) and
    ``models/<name>/aliases/<alias>.json`` (one object: an alias moves in a single atomic write).
    """

    def __init__(self, store: ArtifactStore, name: str):
        self.store, self.name = store, name
        self.root = f"models/{name}"

    # -- versions -----------------------------------------------------------------------------
    def versions(self) -> list[int]:
        found = set()
        for key in self.store.list(f"{self.root}/versions"):
            parts = key.split("/")
            if len(parts) == 5 and parts[4] == "manifest.json" and parts[3].isdigit():
                found.add(int(parts[3]))
        return sorted(found)

    def claim_version(self) -> int:
        """Reserve the next version number with an exclusive create, safe against concurrent registrations."""
        claimed = [int(k.split("/")[3]) for k in self.store.list(f"{self.root}/versions") if k.endswith("/claim.json")]
        version = max(claimed, default=0) + 1
        while not self.store.put_if_absent(f"{self.root}/versions/{version}/claim.json",
                                           json.dumps({"claimed_at": _now()}).encode()):
            version += 1
        return version

    def register(self, model_dir: Path, *, version: Optional[int] = None,
                 files: Optional[dict[str, Union[str, bytes, Path]]] = None,
                 variants: Optional[dict[str, Path]] = None,
                 metadata: Optional[VersionMetadata] = None) -> ModelVersionRef:
        """Upload a save_pretrained folder (plus extra ``files`` and variant folders) as a new version.

        ``version`` is one reserved with ``claim_version`` (to name it in files before upload);
        by default a new one is claimed.
        """
        if not (Path(model_dir) / "config.json").exists():
            raise RegistryError(f"{model_dir} is not a saved model folder (no config.json)")
        if version is None:
            version = self.claim_version()
        elif self.store.exists(f"{self.root}/versions/{version}/manifest.json"):
            raise RegistryError(f"{self.name} version {version} is already registered; versions are immutable")
        prefix = f"{self.root}/versions/{version}"
        hashes = self.store.upload_dir(model_dir, prefix)
        for name, content in (files or {}).items():
            if isinstance(content, Path):
                hashes[name] = self.store.put_file(f"{prefix}/{name}", content)
            else:
                data = content.encode() if isinstance(content, str) else content
                hashes[name] = self.store.put_bytes(f"{prefix}/{name}", data)
        for variant, folder in (variants or {}).items():
            for rel, sha in self.store.upload_dir(folder, f"{prefix}/variants/{variant}").items():
                hashes[f"variants/{variant}/{rel}"] = sha
        manifest = VersionManifest(name=self.name, version=version, created_at=datetime.now(timezone.utc), files=hashes,
                                   variants=["fp32", *sorted(variants or {})], metadata=metadata)
        self.store.put_json(f"{prefix}/manifest.json", manifest.model_dump(mode="json"))  # last: the version exists
        log.info("registered %s version %d", self.name, version)
        return self.ref(version)

    def stage_file(self, version: int, name: str, content: Union[str, bytes]) -> tuple[str, str]:
        """Write a file into a claimed version's folder before it is registered; return (URI, sha256).

        Readers trust only what a committed manifest names, so a staged file is invisible until
        :meth:`register` lists it; a registered version is immutable.
        """
        prefix = f"{self.root}/versions/{version}"
        if not self.store.exists(f"{prefix}/claim.json"):
            raise RegistryError(f"{self.name} version {version} was not claimed (claim_version) before staging {name}")
        if self.store.exists(f"{prefix}/manifest.json"):
            raise RegistryError(f"{self.name} version {version} is already registered; versions are immutable")
        data = content.encode() if isinstance(content, str) else content
        return self.store.uri_for(f"{prefix}/{name}"), self.store.put_bytes(f"{prefix}/{name}", data)

    def manifest(self, version: int) -> VersionManifest:
        try:
            return VersionManifest.model_validate(self.store.get_json(f"{self.root}/versions/{version}/manifest.json"))
        except ArtifactNotFound:
            known = ", ".join(map(str, self.versions())) or "none"
            raise RegistryError(f"model {self.name!r} has no version {version} (versions: {known})") from None

    def ref(self, version: int) -> ModelVersionRef:
        manifest = self.manifest(version)
        return ModelVersionRef(
            name=self.name, version=version,
            uri=self.store.uri_for(f"{self.root}/versions/{version}/manifest.json"),
            sha256=manifest.files.get("model.safetensors", ""),
            variants=manifest.variants,
            aliases=[a for a in ALIASES if self.alias(a) == version],
        )

    def read_file(self, version: int, name: str) -> bytes:
        return self.store.get_bytes(f"{self.root}/versions/{version}/{name}")

    # -- aliases ------------------------------------------------------------------------------
    def _alias_state(self, alias: str) -> Optional[dict]:
        try:
            return self.store.get_json(f"{self.root}/aliases/{alias}.json")
        except ArtifactNotFound:
            return None

    def alias(self, alias: str) -> Optional[int]:
        state = self._alias_state(alias)
        return state["version"] if state else None

    def set_alias(self, alias: str, version: int, reason: str) -> None:
        """Point ``alias`` at ``version`` in one atomic write; the previous target goes on a stack for rollback."""
        self.manifest(version)  # must exist
        state = self._alias_state(alias) or {"stack": [], "log": []}
        if state.get("version") == version:
            return
        if state.get("version") is not None:
            state["stack"].append(state["version"])
        entry = {"version": version, "at": _now(), "reason": reason, "action": "set"}
        self.store.put_json(f"{self.root}/aliases/{alias}.json", {
            "alias": alias, "version": version, "updated_at": entry["at"], "reason": reason,
            "stack": state["stack"], "log": [*state["log"], entry],
        })
        log.info("%s/%s -> version %d (%s)", self.name, alias, version, reason)

    def rollback(self, alias: str = "production", reason: str = "rollback") -> tuple[int, int]:
        """Move ``alias`` back to the version it pointed at before; return (from, to)."""
        state = self._alias_state(alias)
        if not state:
            raise RegistryError(f"model {self.name!r} has no {alias!r} alias to roll back")
        if not state["stack"]:
            raise RegistryError(f"{self.name}/{alias} is at version {state['version']} "
                                "and has no earlier version to roll back to")
        current, target = state["version"], state["stack"][-1]
        entry = {"version": target, "at": _now(), "reason": reason, "action": "rollback", "from": current}
        self.store.put_json(f"{self.root}/aliases/{alias}.json", {
            "alias": alias, "version": target, "updated_at": entry["at"], "reason": reason,
            "stack": state["stack"][:-1], "log": [*state["log"], entry],
        })
        log.info("%s/%s rolled back %d -> %d", self.name, alias, current, target)
        return current, target

    def clear_alias(self, alias: str, reason: str) -> Optional[int]:
        """Point ``alias`` at nothing (a canary promoted or rolled back); return the version it named."""
        state = self._alias_state(alias)
        if not state or state.get("version") is None:
            return None
        entry = {"version": None, "at": _now(), "reason": reason, "action": "clear", "from": state["version"]}
        self.store.put_json(f"{self.root}/aliases/{alias}.json", {
            "alias": alias, "version": None, "updated_at": entry["at"], "reason": reason,
            "stack": state["stack"], "log": [*state["log"], entry],
        })
        log.info("%s/%s cleared (was version %d): %s", self.name, alias, state["version"], reason)
        return state["version"]

    def alias_set_at(self, alias: str) -> Optional[str]:
        """When ``alias`` last moved (ISO 8601), None if it never did."""
        state = self._alias_state(alias)
        return state["updated_at"] if state else None

    def history(self, alias: str = "production") -> list[dict]:
        state = self._alias_state(alias)
        return state["log"] if state else []

    def resolve(self, ref: Union[str, int]) -> int:
        """A version number from a number, a numeric string or an alias name."""
        if isinstance(ref, int) or str(ref).isdigit():
            version = int(ref)
            self.manifest(version)
            return version
        version = self.alias(str(ref))
        if version is None:
            raise RegistryError(f"model {self.name!r} has no {ref!r} alias yet (versions: {self.versions() or 'none'})")
        return version

    # -- loading ------------------------------------------------------------------------------
    def download(self, version: int, cache_dir: Path) -> Path:
        """A local copy of the version's folder (cached by version and the model's sha256)."""
        manifest = self.manifest(version)
        local = Path(cache_dir) / "models" / self.name / f"{version}-{manifest.files.get('model.safetensors', '')[:12]}"
        if (local / ".complete").exists():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=local.parent) as tmp:
            self.store.download_dir(f"{self.root}/versions/{version}", Path(tmp) / "v")
            if not local.exists():
                Path(tmp, "v").rename(local)
        (local / ".complete").touch()
        return local

    def load(self, ref: Union[str, int] = "production", *, variant: str = "fp32", cache_dir: Path,
             device: str = "cpu") -> LoadedModel:
        """Load a version (or alias) for inference; ``variant='int8'`` loads the quantized variant."""
        version = self.resolve(ref)
        manifest = self.manifest(version)
        if variant not in manifest.variants:
            raise RegistryError(f"{self.name} version {version} has no {variant!r} variant (has {manifest.variants})")
        model, tokenizer = load_model(self.download(version, cache_dir), variant, device=device)
        return LoadedModel(model, tokenizer, self.name, version, variant, manifest)
