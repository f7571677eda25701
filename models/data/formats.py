"""Ingest file formats: .txt/.md/.jsonl/.parquet files and saved `datasets` read into located candidates."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

TEXT_SUFFIXES = (".txt", ".md")
SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json")
_PREVIEW = 200
_BATCH = 1024


class IngestError(ValueError):
    """The input is structurally unusable; the message names the source and what is wrong."""


@dataclass(frozen=True)
class Candidate:
    """One record as read from a source, at ``source:line`` (1-based line, or row for tables).

    ``text`` is None when the record was rejected while reading; ``reason`` and ``detail`` say why.
    """

    source: str
    line: int
    text: Optional[str] = None
    reason: Optional[str] = None
    detail: str = ""
    preview: str = ""


def rejected(source: str, line: int, reason: str, detail: str, preview: str = "") -> Candidate:
    return Candidate(source=source, line=line, reason=reason, detail=detail, preview=preview[:_PREVIEW])


def read_file(path: Path, *, label: str, text_field: str, chunk_chars: int) -> Iterator[Candidate]:
    """Candidates of one local file, chosen by its extension.

    Args:
        path: The file to read.
        label: How locations name the file (a path, or the s3:// URI it was downloaded from).
        text_field: Field/column holding the text in .jsonl and .parquet files.
        chunk_chars: Longest record cut from a .txt/.md file.
    """
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return text_records(path.read_bytes(), chunk_chars, label)
    if suffix == ".jsonl":
        return jsonl_records(path.read_bytes(), text_field, label)
    if suffix == ".parquet":
        return parquet_records(path, text_field, label)
    raise IngestError(f"{label}: unsupported file type {suffix or '(no extension)'!r}; "
                      f"use one of {', '.join(SUFFIXES)}")


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":  # a final newline ends the last line, it does not start another
        parts.pop()
    for number, raw in enumerate(parts, start=1):
        yield number, raw.removesuffix(b"\r")


def _decode(raw: bytes, source: str, line: int) -> Union[str, Candidate]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return rejected(source, line, "invalid_utf8", f"not UTF-8: {exc}", raw.decode("utf-8", "replace"))
    return text.removeprefix("\ufeff") if line == 1 else text


def text_records(data: bytes, limit: int, source: str) -> Iterator[Candidate]:
    """Cut plain text into records of at most ``limit`` characters, at blank lines first, then at line ends."""
    return _pack(_paragraphs(data, source), limit, source)


def _paragraphs(data: bytes, source: str) -> Iterator[Union[Candidate, list[tuple[int, str]]]]:
    """Paragraphs as [(line, text)], with undecodable lines passed through as rejections."""
    paragraph: list[tuple[int, str]] = []
    for number, raw in _lines(data):
        line = _decode(raw, source, number)
        if isinstance(line, str) and line.strip():
            paragraph.append((number, line))
            continue
        if paragraph:  # a blank or undecodable line ends a paragraph
            yield paragraph
            paragraph = []
        if isinstance(line, Candidate):
            yield line
    if paragraph:
        yield paragraph


def _pack(items, limit: int, source: str) -> Iterator[Candidate]:
    buf, start = "", 0
    for item in items:
        if isinstance(item, Candidate):  # an undecodable line: flush first, so text never joins across it
            if buf:
                yield Candidate(source, start, buf)
                buf = ""
            yield item
            continue
        text = "\n".join(line for _, line in item)
        if buf and len(buf) + 2 + len(text) > limit:
            yield Candidate(source, start, buf)
            buf = ""
        if len(text) > limit:
            yield from _split_paragraph(item, limit, source)
        elif buf:
            buf += "\n\n" + text
        else:
            buf, start = text, item[0][0]
    if buf:
        yield Candidate(source, start, buf)


def _split_paragraph(paragraph: list[tuple[int, str]], limit: int, source: str) -> Iterator[Candidate]:
    # Lines longer than the limit are cut hard: a record never exceeds chunk_chars.
    pieces = [(n, line[i:i + limit]) for n, line in paragraph for i in range(0, len(line), limit)]
    buf, start = "", 0
    for number, piece in pieces:
        if buf and len(buf) + 1 + len(piece) > limit:
            yield Candidate(source, start, buf)
            buf = ""
        buf, start = (buf + "\n" + piece, start) if buf else (piece, number)
    if buf:
        yield Candidate(source, start, buf)


def jsonl_records(data: bytes, field: str, source: str) -> Iterator[Candidate]:
    """One candidate per line of JSON Lines, the text taken from ``field``."""
    for number, raw in _lines(data):
        line = _decode(raw, source, number)
        if isinstance(line, Candidate):
            yield line
        elif not line.strip():
            yield rejected(source, number, "empty", "blank line")
        else:
            yield _json_record(line, field, source, number)


def _json_record(line: str, field: str, source: str, number: int) -> Candidate:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return rejected(source, number, "malformed_json", f"invalid JSON: {exc}", line)
    if not isinstance(obj, dict):
        return rejected(source, number, "malformed_json", f"expected a JSON object, got {type(obj).__name__}", line)
    if field not in obj:
        keys = ", ".join(map(repr, sorted(obj))) or "none"
        return rejected(source, number, "missing_field", f"no field {field!r}; keys present: {keys}", line)
    return field_value(obj[field], field, source, number)


def field_value(value: Any, field: str, source: str, number: int) -> Candidate:
    """A candidate for a field's value: its text, or a ``not_text`` rejection."""
    if isinstance(value, str):
        return Candidate(source, number, value)
    kind = "null" if value is None else type(value).__name__
    return rejected(source, number, "not_text", f"field {field!r} is {kind}, not a string", repr(value))


def parquet_records(path: Path, field: str, source: str) -> Iterator[Candidate]:
    """One candidate per row of column ``field`` (line = 1-based row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{source}: not a readable Parquet file: {exc}") from None
    columns = parquet.schema_arrow.names
    if field not in columns:
        raise IngestError(f"{source}: Parquet file has no column {field!r}; its columns are {columns}")
    return _rows((batch.column(0).to_pylist() for batch in parquet.iter_batches(columns=[field], batch_size=_BATCH)),
                 field, source)


def _rows(batches, field: str, source: str) -> Iterator[Candidate]:
    row = 0
    for values in batches:
        for value in values:
            row += 1
            yield field_value(value, field, source, row)


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in DATASET_MARKERS)


def dataset_records(path: Path, field: str) -> Iterator[Candidate]:
    """Rows of a `datasets` Dataset/DatasetDict saved with ``save_to_disk``; every split of a dict, in order."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for split, table in splits:
        source = f"{path}[{split}]" if split else str(path)
        if field not in table.column_names:
            raise IngestError(f"{source}: dataset has no column {field!r}; its columns are {table.column_names}")
        column = table.select_columns([field])
        batches = (column[i:i + _BATCH][field] for i in range(0, len(column), _BATCH))
        yield from _rows(batches, field, source)
