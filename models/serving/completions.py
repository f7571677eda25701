"""``POST /v1/completions`` over the continuous-batching engine: one request's jobs awaited from the event loop,
answered whole or streamed as server-sent events, and captured before the answer (or the stream's end) goes out."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from fastapi import Request

from llmops.models.serving.api import ApiError, ParsedRequest
from llmops.models.serving.chat import chat_logprobs
from llmops.models.serving.jobs import Job, RequestTimeout, make_jobs

log = logging.getLogger("llmops.serving")

DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


@dataclass
class Flight:
    """One request in the engine: its jobs, and a queue the engine thread's notifications land on."""

    request: ParsedRequest
    jobs: list[Job]
    updates: asyncio.Queue
    response_id: str
    received: datetime
    started: float  # time.monotonic() at arrival
    chat: bool = False  # answered as a chat completion

    @property
    def kind(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    @classmethod
    def launch(cls, request: ParsedRequest, submit: Callable[[list[Job]], None], *, timeout_s: float,
               capture: bool, chat: bool = False, response_id: Optional[str] = None) -> Flight:
        loop, updates = asyncio.get_running_loop(), asyncio.Queue()

        def notify(job: Job) -> None:  # the engine thread
            loop.call_soon_threadsafe(updates.put_nowait, job)

        score = capture and request.sampling.max_new_tokens > 0
        jobs = make_jobs(request.prompts, request.sampling, request.n, timeout_s=timeout_s, notify=notify,
                         top_logprobs=request.logprobs or 0, detail=request.logprobs is not None,
                         echo=request.echo, score=score, stream=request.stream, pinned_version=request.version)
        flight = cls(request, jobs, updates, response_id or f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                     datetime.now(timezone.utc), time.monotonic(), chat)
        submit(jobs)
        return flight

    @property
    def done(self) -> bool:
        return all(j.done for j in self.jobs)

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancelled = True

    @property
    def error(self) -> Optional[BaseException]:
        return next((j.error for j in self.jobs if j.error is not None), None)

    @property
    def version(self) -> Optional[int]:
        """The version that answered (None if the request failed before any job started)."""
        return next((j.version for j in self.jobs if j.version is not None), None)

    def raise_error(self) -> None:
        """The first failed job's error as the answer: ours as is, a timeout as 504, anything else as 500."""
        error = self.error
        if error is None:
            return
        if isinstance(error, ApiError):
            raise error
        if isinstance(error, RequestTimeout):
            raise ApiError(504, str(error), type="timeout_error", code="request_timeout")
        raise ApiError(500, f"generation failed: {error}", type="server_error", code="generation_failed")

    async def wait(self, http: Optional[Request]) -> None:
        """Until every job is done. A client that goes away (``http``'s), or an error, cancels the jobs (their rows
        are freed at the next step)."""
        try:
            while not self.done:
                try:
                    await asyncio.wait_for(self.updates.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if http is not None and await http.is_disconnected():
                        raise ApiError(499, "the client closed the connection", code="client_closed") from None
        finally:
            self.cancel()

    # -- results ----------------------------------------------------------------------------------
    def choices(self) -> list[tuple[int, Job]]:
        """(choice index, job) for every choice of the response: a greedy job stands for its copies."""
        return [(j.index * j.copies + k, j) for j in self.jobs for k in range(j.copies)]

    def per_prompt(self) -> list[list[Job]]:
        """The choices of each prompt, in order."""
        n = self.request.n
        ordered = [job for _, job in self.choices()]
        return [ordered[i:i + n] for i in range(0, len(ordered), n)]

    def usage(self) -> dict:
        prompt = sum(len(group[0].prompt_ids) for group in self.per_prompt())
        completion = sum(len(j.tokens) for _, j in self.choices())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def body(self, name: str) -> dict:
        choices = []
        detail = self.request.logprobs is not None
        for index, job in self.choices():
            if self.chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": job.text},
                                "logprobs": chat_logprobs(job.pieces) if detail else None,
                                "finish_reason": job.finish_reason})
                continue
            text = job.prompt_text + job.text if self.request.echo else job.text
            logprobs = _logprobs(job, self.request.echo) if detail else None
            choices.append({"text": text, "index": index, "logprobs": logprobs, "finish_reason": job.finish_reason})
        return {"id": self.response_id, "object": self.kind, "created": int(time.time()),
                "model": f"{name}:{self.jobs[0].version}", "choices": choices, "usage": self.usage()}

    # -- streaming --------------------------------------------------------------------------------
    async def events(self, name: str, on_done: Callable[[], None]) -> AsyncIterator[bytes]:
        """Server-sent events as the openai client reads them: text deltas per choice, a last chunk with each
        choice's finish reason, the usage chunk when asked for, then ``[DONE]``. ``on_done`` (capture) runs
        before ``[DONE]``; an error after the stream began is sent as an ``error`` event."""
        sent = {id(j): 0 for j in self.jobs}
        sent_any: dict[int, bool] = {}  # choice index -> a chunk went out (a chat stream's first carries the role)
        finished: set[int] = set()
        model = None
        while len(finished) < len(self.jobs):
            job: Job = await self.updates.get()
            if id(job) in finished:
                continue
            if job.error is not None:
                yield _sse({"error": _error_body(job.error)})
                return
            model = model or f"{name}:{job.version}"
            if job.done:
                finished.add(id(job))
            delta = job.text[sent[id(job)]:]
            if not delta and not job.done:
                continue
            sent[id(job)] = len(job.text)
            for k in range(job.copies):
                index, finish = job.index * job.copies + k, job.finish_reason if job.done else None
                if self.chat:
                    message = {"content": delta} if sent_any.get(index) else {"role": "assistant", "content": delta}
                    sent_any[index] = True
                    choice = {"index": index, "delta": message, "logprobs": None, "finish_reason": finish}
                else:
                    choice = {"text": delta, "index": index, "logprobs": None, "finish_reason": finish}
                yield _sse(self._chunk(model, [choice]))
        try:
            on_done()
        except ApiError as exc:  # the capture spool is full: the stream ends without [DONE]
            yield _sse({"error": _error_body(exc)})
            return
        if self.request.include_usage:
            yield _sse({**self._chunk(model, []), "usage": self.usage()})
        yield b"data: [DONE]\n\n"

    def _chunk(self, model: Optional[str], choices: list[dict]) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.response_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices}


def _logprobs(job: Job, echo: bool) -> dict:
    """OpenAI's completion ``logprobs`` object for one choice."""
    offset = 0 if echo else len(job.prompt_text)
    offsets = []
    for text, _, _ in job.pieces:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": [p[0] for p in job.pieces], "token_logprobs": [p[1] for p in job.pieces],
            "top_logprobs": [p[2] for p in job.pieces], "text_offset": offsets}


def _error_body(error: BaseException) -> dict:
    if isinstance(error, ApiError):
        return {"message": error.message, "type": error.type, "param": error.param, "code": error.code}
    code = "request_timeout" if isinstance(error, RequestTimeout) else "generation_failed"
    return {"message": str(error), "type": "server_error", "param": None, "code": code}


def _sse(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
