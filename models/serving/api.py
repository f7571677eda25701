"""The OpenAI-compatible HTTP surface: the completion request schema, its validation against limits, error and
response bodies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmops.infra.config import ServeConfig
from llmops.models.model.generation import SamplingParams

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 5  # OpenAI's limit on completion logprobs alternatives


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error", headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _prompt_shape(value: Any) -> Any:
    """OpenAI's four prompt shapes: a string, strings, token ids, lists of token ids; anything else, one message."""
    if isinstance(value, str):
        return value
    if value and _token_ids(value):
        return [value]  # one token-id prompt
    if isinstance(value, list) and (all(isinstance(p, str) for p in value) or all(_token_ids(p) for p in value)):
        return value
    raise ValueError("must be a string, a list of strings, a list of token ids or a list of lists of token ids")


Prompt = Union[str, list[int]]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The body of ``POST /v1/completions``: OpenAI's fields plus ``top_k`` and ``repetition_penalty``.

    Unknown fields are rejected (``extra="forbid"``), as OpenAI does: every field the official client
    can send is declared, and the two extensions arrive through its ``extra_body``.
    """

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: Annotated[Union[str, list[Union[str, list[int]]]], BeforeValidator(_prompt_shape)]
    max_tokens: Optional[int] = Field(None, ge=0, description="0 only with echo: score the prompt, generate nothing.")
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: Optional[int] = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    top_k: Optional[int] = Field(None, ge=0, description="0 or absent: no top-k filtering.")
    repetition_penalty: Optional[float] = Field(None, gt=0)
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                    description="Log-probs of each token and of its top-N alternatives.")
    echo: Optional[bool] = Field(None, description="Return the prompt before the completion (with its log-probs).")
    # accepted only at their neutral value: this server does not implement them
    best_of: Optional[int] = None
    suffix: Optional[str] = None
    logit_bias: Optional[dict[str, float]] = Field(
        None, description="Token id (as a string) -> bias in [-100, 100] added to its logit.")
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    user: Optional[str] = Field(None, max_length=256, description="The end user: kept in the capture record.")


_UNSUPPORTED = {"suffix": (None, "")}  # field: values that mean "not used"
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries


@dataclass(frozen=True)
class Served:
    """What the server serves right now, as far as request validation needs to know."""

    name: str
    version: int
    context_length: int
    vocab_size: int = 1 << 31  # the model's logits width: logit_bias keys must lie below it


@dataclass(frozen=True)
class ParsedRequest:
    prompts: list[Prompt]
    sampling: SamplingParams
    n: int
    version: Optional[int]  # the version the request pinned with ``name:version``, if any
    logprobs: Optional[int] = None  # None: no logprobs object; N: the top-N alternatives too
    echo: bool = False
    stream: bool = False
    include_usage: bool = False


def _check_model(model: str, served: Served) -> Optional[int]:
    if model == served.name:
        return None
    if model == f"{served.name}:{served.version}":
        return served.version
    raise ApiError(404, f"The model {model!r} does not exist or is not served here: this server serves "
                        f"{served.name!r} (version {served.version}, also addressable as "
                        f"'{served.name}:{served.version}')", param="model", code="model_not_found")


def _check_prompts(prompt: Union[str, list[Prompt]], cfg: ServeConfig, served: Served) -> list[Prompt]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ApiError(400, "prompt is an empty list: send at least one prompt", param="prompt")
    if len(prompts) > cfg.max_batch_prompts:
        raise ApiError(400, f"prompt holds {len(prompts)} prompts; at most {cfg.max_batch_prompts} are allowed "
                            f"per request (max_batch_prompts)", param="prompt")
    for i, item in enumerate(prompts):
        where = "prompt" if isinstance(prompt, str) else f"prompt[{i}]"
        if not item:
            raise ApiError(400, f"{where} is empty: send some text to complete", param="prompt")
        if isinstance(item, list):
            bad = next((t for t in item if not 0 <= t < served.vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"{where} holds {bad}, not a token id of this model (0 to "
                                    f"{served.vocab_size - 1})", param="prompt")
            if len(item) > served.context_length:
                raise ApiError(400, f"{where} is {len(item)} tokens; the model's context is {served.context_length}",
                               param="prompt")
        elif len(item) > cfg.max_prompt_chars:
            raise ApiError(400, f"{where} is {len(item)} characters long; the limit is {cfg.max_prompt_chars} "
                                f"characters (max_prompt_chars)", param="prompt")
    return prompts


def _check_limits(req: CompletionRequest, cfg: ServeConfig, served: Served) -> tuple[int, int, list[str]]:
    max_tokens = req.max_tokens if req.max_tokens is not None else cfg.default_max_tokens
    if max_tokens == 0 and not req.echo:
        raise ApiError(400, "max_tokens is 0: nothing would be returned; ask for at least 1 token, or send "
                            "echo=true to score the prompt alone", param="max_tokens")
    if max_tokens > cfg.max_tokens_limit:
        raise ApiError(400, f"max_tokens is {max_tokens}; the limit is {cfg.max_tokens_limit} (max_tokens_limit)",
                       param="max_tokens")
    if max_tokens >= served.context_length:
        raise ApiError(400, f"max_tokens is {max_tokens}; the model's context is {served.context_length} tokens, "
                            f"so at most {served.context_length - 1} can be generated", param="max_tokens")
    n = req.n if req.n is not None else 1
    if n > cfg.max_n:
        raise ApiError(400, f"n is {n}; the limit is {cfg.max_n} completions per prompt (max_n)", param="n")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"stop holds {len(stop)} sequences; at most {MAX_STOP_SEQUENCES} are allowed", param="stop")
    if any(not s for s in stop):
        raise ApiError(400, "stop sequences must not be empty strings", param="stop")
    return max_tokens, n, stop


def _check_unsupported(req: CompletionRequest) -> None:
    for field, neutral in _UNSUPPORTED.items():
        value = getattr(req, field)
        if value not in neutral:
            raise ApiError(400, f"{field}={value!r} is not supported by this server; leave it out", param=field)
    if req.best_of not in (None, req.n or 1):
        raise ApiError(400, f"best_of={req.best_of!r} is not supported by this server; use n", param="best_of")


def _check_logit_bias(bias: Optional[dict[str, float]], served: Served) -> tuple[tuple[int, float], ...]:
    if not bias:
        return ()
    if len(bias) > MAX_LOGIT_BIAS:
        raise ApiError(400, f"logit_bias holds {len(bias)} entries; at most {MAX_LOGIT_BIAS} are allowed",
                       param="logit_bias")
    out = []
    for key, value in bias.items():
        if not key.isdigit() or int(key) >= served.vocab_size:
            raise ApiError(400, f"logit_bias key {key!r} is not a token id of this model (0 to "
                                f"{served.vocab_size - 1})", param="logit_bias")
        if not -100 <= value <= 100:
            raise ApiError(400, f"logit_bias[{key!r}] is {value}; biases lie in [-100, 100]", param="logit_bias")
        out.append((int(key), float(value)))
    return tuple(out)


def parse_completion(req: CompletionRequest, cfg: ServeConfig, served: Served) -> ParsedRequest:
    """Check a request against the served model and the limits; raise ``ApiError`` naming the field."""
    version = _check_model(req.model, served)
    _check_unsupported(req)
    prompts = _check_prompts(req.prompt, cfg, served)
    max_tokens, n, stop = _check_limits(req, cfg, served)
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    top_k = req.top_k or None  # 0 means off, as in vLLM
    sampling = SamplingParams(
        max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=float(temperature or 1.0),
        top_p=top_p if top_p < 1 else None, top_k=top_k, repetition_penalty=float(req.repetition_penalty or 1.0),
        stop=tuple(stop), seed=req.seed, presence_penalty=float(req.presence_penalty or 0.0),
        frequency_penalty=float(req.frequency_penalty or 0.0), logit_bias=_check_logit_bias(req.logit_bias, served),
    )
    stream = bool(req.stream)
    if req.stream_options is not None and not stream:
        raise ApiError(400, "stream_options is only allowed with stream=true", param="stream_options")
    if stream and req.logprobs is not None:
        raise ApiError(400, "logprobs with stream=true is not supported by this server; ask for one or the other",
                       param="logprobs")
    return ParsedRequest(prompts=prompts, sampling=sampling, n=n, version=version, logprobs=req.logprobs,
                         echo=bool(req.echo), stream=stream,
                         include_usage=bool(req.stream_options and req.stream_options.include_usage))


def _validation_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's 422 as OpenAI's 400, naming the (first) offending field."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    field = ".".join(loc) or "body"
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {field}", param=field)
    if err.get("type") == "json_invalid":
        return ApiError(400, f"The request body is not valid JSON: {message}", param=None)
    if err.get("type") == "missing":
        return ApiError(400, f"{field} is required", param=loc[0] if loc else None)
    return ApiError(400, f"{field}: {message} (got {err.get('input')!r:.100})", param=loc[0] if loc else None)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error (ours, validation, unknown routes) in OpenAI's error shape."""

    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return ApiError(exc.status_code, str(exc.detail), type=kind).response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
