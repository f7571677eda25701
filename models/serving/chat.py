"""``POST /v1/chat/completions``: OpenAI's chat request, rendered with the served tokenizer's chat template into one
prompt that the completion path then serves (limits, sampling, capture and streaming are the same)."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedTokenizerBase

from llmops.models.serving.api import MAX_TOP_LOGPROBS, ApiError, CompletionRequest, StreamOptions


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # ``name`` and the like go to the template as they came

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``: the fields a base-model chat needs (tools and response formats
    are not declared, so they are refused by name)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: Optional[int] = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    logit_bias: Optional[dict[str, float]] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    user: Optional[str] = Field(None, max_length=256)


def _text(message: ChatMessage, index: int) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{index}].content holds a {part.get('type')!r} part; this model reads "
                                    "text parts only", param="messages")
            parts.append(part["text"])
        content = "".join(parts)
    return {**message.model_dump(exclude_none=True), "content": content or ""}


def chat_prompt(req: ChatCompletionRequest, tokenizer: PreTrainedTokenizerBase) -> str:
    """The conversation rendered by the tokenizer's chat template, ending where the assistant's reply begins."""
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "the served model's tokenizer has no chat template, so it cannot read messages: use "
                            "/v1/completions with a prompt, or serve a tokenizer whose tokenizer_config.json (or "
                            "chat_template.jinja) defines one", param="messages", code="chat_template_missing")
    messages = [_text(m, i) for i, m in enumerate(req.messages)]
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # the template's own checks (roles out of order, ...) speak for themselves
        raise ApiError(400, f"the chat template cannot render these messages: {exc}", param="messages") from None


def as_completion(req: ChatCompletionRequest, prompt: str) -> CompletionRequest:
    """The completion request the chat request amounts to."""
    top = (req.top_logprobs or 0) if req.logprobs else None
    return CompletionRequest(
        model=req.model, prompt=prompt, max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=req.temperature, top_p=req.top_p, n=req.n, stop=req.stop, seed=req.seed, top_k=req.top_k,
        repetition_penalty=req.repetition_penalty, stream=req.stream, stream_options=req.stream_options,
        logprobs=top, logit_bias=req.logit_bias, frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty, user=req.user,
    )


def chat_logprobs(pieces: list) -> dict:
    """OpenAI's chat ``logprobs`` object from a job's (text, logprob, {alternative: logprob}) pieces."""
    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
    return {"content": [{**entry(text, lp), "top_logprobs": [entry(t, v) for t, v in top.items()]}
                        for text, lp, top in pieces]}
