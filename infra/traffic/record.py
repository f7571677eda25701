"""The traffic record: one served request as the server captures it, typed, and the one Arrow schema derived from it."""
from __future__ import annotations

import json
import types
from datetime import datetime
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

# Strict: a record holds the values it was given (no "31" read as 31, no True as 1); an int given for a float
# field becomes that float, which JSON readers take as the same number.
_CONFIG = ConfigDict(frozen=True, extra="forbid", strict=True)

FinishReason = Literal["stop", "length"]
# Ids of the served tokenizer; the bounds make the Arrow column int32 (see arrow_type), as compaction stores them.
TokenId = Annotated[int, Field(ge=0, lt=1 << 31)]


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("ts must be timezone-aware: traffic is partitioned by its UTC hour")
    return moment


# isoformat, not pydantic's "Z": compaction stores a ts exactly only when it reads back as isoformat writes it
Timestamp = Annotated[datetime, AfterValidator(_aware), PlainSerializer(datetime.isoformat, return_type=str)]


class TrafficParams(BaseModel):
    """The sampling parameters a request was served with."""

    model_config = _CONFIG

    max_tokens: int = Field(description="Most tokens generated per choice.")
    temperature: float = Field(description="Sampling temperature; 0.0 when the request was greedy.")
    top_p: Optional[float] = Field(None, description="Nucleus sampling mass; null when not set.")
    top_k: Optional[int] = Field(None, description="Top-k sampling; null when not set.")
    n: int = Field(description="Choices generated for the prompt (one completion each).")
    stop: Optional[list[str]] = Field(None, description="Stop strings; null when none were given.")


class TrafficCompletion(BaseModel):
    """One generated choice."""

    model_config = _CONFIG

    text: str = Field(description="The generated text, cut at a stop string.")
    finish_reason: FinishReason = Field(description='"stop" (eos or a stop string) or "length" (max_tokens reached).')
    tokens: int = Field(description="Generated tokens before the end (the eos itself not counted).")
    mean_logprob: float = Field(description="Mean log-prob (nats) of the generated tokens under the served model.")
    mean_entropy: float = Field(description="Mean entropy (nats) of the next-token distribution while generating.")


class TrafficFeatures(BaseModel):
    """What drift monitoring measures on a request, computed by the server (NaN where not computable)."""

    model_config = _CONFIG

    prompt_chars: int = Field(description="Characters of the prompt.")
    prompt_tokens: int = Field(description="Tokens of the prompt under the served tokenizer.")
    bytes_per_token: float = Field(description="UTF-8 bytes of the prompt per prompt token.")
    prompt_surprisal: float = Field(description="Mean NLL (nats/token) of the prompt under the served model.")
    completion_tokens: float = Field(description="Generated tokens, mean over the n choices.")
    completion_logprob: float = Field(description="Mean log-prob per generated token, mean over choices.")
    completion_entropy: float = Field(
        description="Mean entropy (nats) of the next-token distribution while generating, mean over choices.")
    stop_reason: FinishReason = Field(description='Finish reason of the first choice: "stop" | "length".')
    latency_ms: Optional[float] = Field(
        None, description="Generation time of the request in ms; null when it was not timed alone (reference records).")


class TrafficRecord(BaseModel):
    """One prompt of a served request: one line of the traffic log (docs/contracts.md, "Traffic record")."""

    model_config = _CONFIG

    id: str = Field(description='The response id ("cmpl-…"); "-<i>" appended per prompt of a multi-prompt request.')
    ts: Timestamp = Field(description="When the request was received: ISO 8601 with its UTC offset.")
    model: str = Field(description="The registry model served.")
    version: int = Field(description="The registry version served.")
    variant: str = Field(description='The variant served: "fp32" or a compressed one ("int8").')
    prompt: str = Field(description="The prompt as received.")
    prompt_token_ids: list[TokenId] = Field(
        description="The served tokenizer's ids of the whole prompt (no special tokens).")
    params: TrafficParams = Field(description="The sampling parameters of the request.")
    completions: list[TrafficCompletion] = Field(min_length=1, description="One per choice (params.n).")
    features: TrafficFeatures = Field(description="The measured features drift monitoring reads.")
    # since format 2 of the compacted Parquet files (format 1 had neither column)
    x_request_id: Optional[str] = Field(
        None, description="The request's X-Request-ID: the client's, or the one the server generated.")
    user: Optional[str] = Field(None, description="The request's `user` field, when the client sent one.")

    def json_line(self) -> str:
        """The record as the traffic log holds it (without the newline).

        The standard library writes it, as the log has always been written: NaN features as ``NaN``
        (the log's readers take it back as NaN; orjson and pydantic would write null) and floats by repr.
        """
        return json.dumps(self.model_dump(), ensure_ascii=False)


def _bounds(metadata: list[Any]) -> tuple[Optional[int], Optional[int]]:
    """(lowest, highest) integer allowed by pydantic/annotated-types constraints, None where unbounded."""
    low = high = None
    for item in metadata:
        for constraint in getattr(item, "metadata", None) or [item]:  # a Field(...) in Annotated holds its own
            if getattr(constraint, "ge", None) is not None:
                low = constraint.ge
            if getattr(constraint, "gt", None) is not None:
                low = constraint.gt + 1
            if getattr(constraint, "le", None) is not None:
                high = constraint.le
            if getattr(constraint, "lt", None) is not None:
                high = constraint.lt - 1
    return low, high


def _integer(metadata: list[Any]) -> pa.DataType:
    low, high = _bounds(metadata)
    fits32 = low is not None and high is not None and -(1 << 31) <= low and high < 1 << 31
    return pa.int32() if fits32 else pa.int64()


_SCALARS = {str: pa.string(), float: pa.float64(), datetime: pa.timestamp("us", tz="UTC")}


def arrow_type(annotation: Any, metadata: Optional[list[Any]] = None) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) of a field annotation of a traffic model.

    str and Literal of str -> string, int -> int64 (int32 when its bounds fit, e.g. :data:`TokenId`),
    float -> float64, datetime -> timestamp[us, UTC], list[X] -> list<X>, a model -> struct of its
    fields, Optional[X] -> X nullable. Any other annotation raises TypeError, so a new field of a
    type the store has no column for fails here, not in a compaction.
    """
    metadata = list(metadata or [])
    while get_origin(annotation) is Annotated:
        annotation, *more = get_args(annotation)
        metadata += more
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) != 1 or len(get_args(annotation)) != 2:
            raise TypeError(f"no Arrow type for the union {annotation!r}: only Optional[X] is stored")
        return arrow_type(members[0], metadata)[0], True
    if origin is Literal:
        if not all(isinstance(v, str) for v in get_args(annotation)):
            raise TypeError(f"no Arrow type for {annotation!r}: only Literals of strings are stored")
        return pa.string(), False
    if origin is list:
        (item,) = get_args(annotation)
        typ, nullable = arrow_type(item)
        return pa.list_(pa.field("item", typ, nullable=nullable)), False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(list(arrow_schema(annotation))), False
    if annotation is int:
        return _integer(metadata), False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    raise TypeError(f"no Arrow type for {annotation!r}")


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a model's fields, in field order (see :func:`arrow_type`)."""
    fields = []
    for name, info in model.model_fields.items():
        typ, nullable = arrow_type(info.annotation, info.metadata)
        fields.append(pa.field(name, typ, nullable=nullable))
    return pa.schema(fields)


def _nullable(field: pa.Field) -> pa.Field:
    typ = field.type
    if pa.types.is_struct(typ):
        typ = pa.struct([_nullable(f) for f in typ])
    elif pa.types.is_list(typ):
        typ = pa.list_(_nullable(typ.value_field))
    return field.with_type(typ).with_nullable(True)


def lenient(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every field nullable, nested ones too: what a reader of the traffic log must take.

    The log also holds records of other producers, with any field missing, and compaction leaves a
    value that does not fit its column null (keeping it in ``extra``).
    """
    return pa.schema([_nullable(f) for f in schema])


# The one Arrow schema of a traffic record: the compacted Parquet columns and the Arrow JSON parsers derive from it.
SCHEMA = arrow_schema(TrafficRecord)
