"""Settings that belong to the environment (store, S3 endpoint, credentials, Prefect API), read from env vars."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where llmops keeps things and how it reaches them.

    Every field reads the environment variable ``LLMOPS_<FIELD>`` (for example
    ``LLMOPS_STORE_URI=s3://bucket/prefix``). AWS credentials also fall back to boto3's own
    chain (``AWS_ACCESS_KEY_ID``, profiles, instance roles) when left unset here.
    """

    model_config = SettingsConfigDict(env_prefix="LLMOPS_", extra="ignore")

    store_uri: str = Field(
        default="llmops-store",
        description="Artifact store: a local directory (relative to the working directory) or s3://bucket/prefix.",
    )
    cache_dir: Path = Field(
        default=Path(".llmops-cache"),
        description="Local scratch space: models downloaded from the store, built-in corpora.",
    )
    s3_endpoint_url: Optional[str] = Field(default=None, description="Custom S3 endpoint, e.g. MinIO's http://host:9000.")
    s3_public_endpoint_url: Optional[str] = Field(
        default=None,
        description="The S3 endpoint as browsers reach it, when they cannot reach s3_endpoint_url (a compose service "
        "name, a cluster-internal address): presigned report links are signed for this host.",
    )
    s3_region: Optional[str] = Field(default=None, description="Region for the S3 client.")
    s3_access_key_id: Optional[SecretStr] = None
    s3_secret_access_key: Optional[SecretStr] = None
    api_key: Optional[SecretStr] = Field(
        default=None,
        description="API key(s) the model server requires (comma-separated): `Authorization: Bearer <key>` on every "
        "route but /health.",
    )
    api_key_file: Optional[Path] = Field(default=None, description="A file of API keys, one per line (# comments).")
    report_url_expiry_s: int = Field(
        default=7 * 24 * 3600, ge=1, le=7 * 24 * 3600,
        description="How long a presigned report link (S3 store) stays valid; 7 days is S3's limit.",
    )
    report_base_url: Optional[str] = Field(
        default=None,
        description="Where `llmops reports` serves a local store (e.g. http://reports.internal:8090): artifact links "
        "point there instead of file://.",
    )
    task_timeouts: dict[str, float] = Field(
        default_factory=dict,
        description="Per-task timeouts in seconds overriding the defaults (tasks/core/context.py TASK_TIMEOUTS_S), "
        'as JSON: LLMOPS_TASK_TIMEOUTS=\'{"train-model": 7200}\'. Read when the tasks are imported.',
    )
    prefect_api_url: Optional[str] = Field(
        default=None,
        description="Prefect API to use; unset means Prefect's own PREFECT_API_URL or an ephemeral server.",
    )

    def __repr__(self) -> str:  # never print credentials, even by accident
        return f"Settings(store_uri={self.store_uri!r}, s3_endpoint_url={self.s3_endpoint_url!r})"

    __str__ = __repr__


def api_keys(settings: Settings) -> list[str]:
    """The server's API keys: ``LLMOPS_API_KEY`` (comma-separated) and the lines of ``LLMOPS_API_KEY_FILE``."""
    keys = settings.api_key.get_secret_value().split(",") if settings.api_key else []
    if settings.api_key_file is not None:
        try:
            lines = Path(settings.api_key_file).expanduser().read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"LLMOPS_API_KEY_FILE={settings.api_key_file}: cannot read it: {exc}") from None
        keys += [line for line in lines if not line.lstrip().startswith("#")]
    return [k.strip() for k in keys if k.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; call ``get_settings.cache_clear()`` after changing env vars)."""
    return Settings()
