"""The serve section: the OpenAI-compatible server's address, limits, capture and reload."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmops.infra.config.base import Frozen


class CanaryConfig(Frozen):
    """Promotion through a canary: the gate's winner serves a share of traffic beside production, and a check
    (the ``canary`` deployment) promotes it or rolls it back on the traffic each one served."""

    enabled: bool = Field(False, description="A passing candidate becomes the canary instead of production.")
    alias: str = Field(
        "canary",
        description="Registry alias of the canary: set on a passing candidate (enabled), served beside serve.alias, "
        "cleared by the check.",
    )
    share: float = Field(0.1, ge=0, le=1, description="Share of requests the canary answers (sticky per user).")
    mode: Literal["split", "shadow"] = Field(
        "split", description="split: the canary answers its share; shadow: it answers a copy of every request, "
        "captured, never returned.",
    )
    min_requests: int = Field(200, ge=1, description="Requests each side must have served before a decision.")
    max_error_rate_increase: float = Field(0.01, ge=0, description="Canary error rate minus production's, at most.")
    max_latency_ratio: float = Field(1.5, gt=0, description="Canary p95 latency over production's, at most.")
    max_logprob_drop: float = Field(
        0.25, ge=0, description="Nats per token the canary's mean completion log-prob may lie below production's.",
    )
    drift_alpha: float = Field(0.01, gt=0, lt=1, description="Significance of a completion feature's KS test.")
    max_drift_effect: float = Field(
        0.5, gt=0, le=1, description="Largest KS statistic between the two sides' completion features tolerated.",
    )
    check_every_minutes: int = Field(10, ge=0, description="How often the canary deployment checks; 0: never.")


class ServeConfig(Frozen):
    """The OpenAI-compatible completions server (``llmops serve``). It serves the version a registry alias names, in
    the chosen variant, reloads when the alias moves, bounds every request (prompt, tokens, n, body, queue), batches
    decoding continuously, captures each request with its features to the traffic log that monitoring reads, and
    can roll a candidate out through a canary."""

    host: str = Field(
        "127.0.0.1",
        description="Address the server binds to; a non-loopback one is refused without an API key (LLMOPS_API_KEY) "
        "unless insecure.",
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port the server listens on; 0 picks a free one.")
    alias: str = Field(
        "production",
        description="Registry alias whose version is served and followed (reload_interval_s): production moves when "
        "a candidate is promoted, staging with every new version.",
    )
    variant: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto", description="auto: the fastest variant of the served version that passed its parity and speed gate "
        "(fp32 when none did); or a named variant the version has.",
    )
    max_prompt_chars: int = Field(
        8000, ge=1,
        description="Longest text prompt in characters, else 400 (token-id prompts: the model's context bounds them).",
    )
    max_tokens_limit: int = Field(256, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(
        16, ge=1,
        description="Tokens generated when a request gives no max_tokens (keep it within max_tokens_limit); the "
        "reference profile's completions are sampled this long.",
    )
    max_n: int = Field(4, ge=1, description="Most completions a request may ask for per prompt (OpenAI's n), else 400.")
    capture: bool = Field(True, description="Write every request/response with its features to the traffic log.")
    flush_every: int = Field(32, ge=1, description="Flush the traffic buffer after this many records...")
    flush_interval_s: float = Field(2.0, gt=0, description="...or this many seconds.")
    reload_interval_s: float = Field(
        15.0, ge=0, description="Check the alias this often and load a newly promoted model; 0 disables."
    )
    max_batch_prompts: int = Field(16, ge=1, description="Most prompts one completion request may send as a list.")
    capture_buffer_limit: int = Field(
        10_000, ge=1,
        description="Most traffic records held while the store cannot be written; beyond it requests get 503, "
        "no record is dropped.",
    )
    max_queue: int = Field(
        64, ge=1,
        description="Most completion requests admitted at once (generating or waiting); beyond them 429 with "
        "Retry-After, never an unbounded wait.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model serves: auto is CUDA when a GPU is visible (in bf16), else CPU.",
    )
    max_batch_size: int = Field(
        64, ge=1, description="Most sequences decoding together (continuous batching); 1 generates one at a time.",
    )
    max_prefill_tokens: int = Field(
        2048, ge=1, description="Most prompt tokens prefilled between two decode steps (at least one prompt is).",
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="A request still generating after this long ends with a 504 (timeout_error).",
    )
    retry_after_s: int = Field(1, ge=1, description="The Retry-After a 429 answers with.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body; beyond it 413.")
    insecure: bool = Field(
        False,
        description="Allow binding a non-loopback host without an API key (LLMOPS_API_KEY); refused otherwise.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="llmops serve's log lines: text, or one JSON object per line (with the request id).",
    )
    canary: CanaryConfig = Field(
        CanaryConfig(),
        description="Canary rollout: a passing candidate serves a share of traffic beside production until the "
        "canary check promotes it or rolls it back.",
    )
    capture_spool_mb: float = Field(
        256.0, gt=0,
        description="Most megabytes of the local write-ahead spool (<cache>/spool/<model>/) where each record is "
        "fsynced before its response is sent; beyond it requests get 503.",
    )
