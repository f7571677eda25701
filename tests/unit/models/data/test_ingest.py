"""The ingest stage on real files: every source kind, every quarantine reason and error, splits, snapshots."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmops.infra.config import DataConfig
from llmops.infra.store import ArtifactStore, LocalStore
from llmops.models.data.formats import IngestError, text_records
from llmops.models.data.ingest import assign_splits, ingest
from llmops.models.data.snapshot import Kept, load_ref, read_split
from llmops.models.records import DatasetRef


def doc(i: int, topic: str = "document") -> str:
    return f"{topic} number {i}: the quick brown fox jumps over the lazy dog."


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def run(tmp_path: Path, store: ArtifactStore, sources: list, **fields) -> DatasetRef:
    cfg = DataConfig(sources=[str(s) for s in sources], **fields)
    return ingest(cfg, store, model_name="lm", cache_dir=tmp_path / "cache")


def all_texts(store: ArtifactStore, ref: DatasetRef) -> list[str]:
    return [t for split in ("train", "validation", "test") for t in read_split(store, ref, split)]


def split_of(store: ArtifactStore, ref: DatasetRef) -> dict[str, str]:
    return {t: split for split in ref.splits for t in read_split(store, ref, split)}


def quarantine(store: ArtifactStore, ref: DatasetRef) -> list[dict]:
    return [json.loads(line) for line in store.get_text(store.key_for(ref.quarantine_uri)).splitlines()]


def manifest(store: ArtifactStore, ref: DatasetRef) -> dict:
    return store.get_json(store.key_for(ref.uri))


# --- plain text -------------------------------------------------------------------------------

def test_text_is_cut_at_blank_lines_then_line_ends_and_remembers_lines():
    data = b"alpha one\nalpha two\n\nbeta\n\n" + b"g" * 25 + b"\ngamma end\n" + b"x" * 45 + b"\n"
    chunks = [(c.line, c.text) for c in text_records(data, 20, "f.txt")]
    assert chunks == [
        (1, "alpha one\nalpha two"),
        (4, "beta"),
        (6, "g" * 20), (6, "g" * 5 + "\ngamma end"),  # a paragraph over the limit breaks at lines,
        (8, "x" * 20), (8, "x" * 20), (8, "x" * 5),  # and a line over it is cut hard
    ]
    packed = [(c.line, c.text) for c in text_records(b"one\n\ntwo\n\nthree\n", 100, "f.md")]
    assert packed == [(1, "one\n\ntwo\n\nthree")]  # short paragraphs share a record


def test_txt_and_md_files_become_records(tmp_path, store):
    paragraphs = [doc(i) for i in range(30)]
    (tmp_path / "notes.txt").write_text("\n\n".join(paragraphs[:20]) + "\n")
    title = "# Title of the readme file, which is long enough"
    (tmp_path / "readme.md").write_text(title + "\n\n" + "\n\n".join(paragraphs[20:]))
    ref = run(tmp_path, store, [tmp_path / "notes.txt", tmp_path / "readme.md"], chunk_chars=100)
    texts = all_texts(store, ref)
    assert sorted(texts) == sorted(paragraphs + [title])  # one paragraph per record: two exceed 100 chars
    lines = {row["text"]: row["line"] for split in ref.splits for row in _rows(store, ref, split)}
    assert lines[doc(0)] == 1 and lines[doc(1)] == 3 and lines[doc(20)] == 3


def _rows(store, ref, split):
    key = store.key_for(ref.splits[split].uri)
    return pq.read_table(store.local_path(key)).to_pylist()


# --- structured files, folders, globs, datasets ---------------------------------------------------

def test_jsonl_parquet_folder_and_glob_sources(tmp_path, store):
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"body": doc(i), "id": i} for i in range(10)])
    write_parquet(tmp_path / "data" / "deep" / "b.parquet", {"body": [doc(i, "parquet") for i in range(10)]})
    (tmp_path / "data" / "deep" / "ignored.csv").write_text("body\nnot read\n")
    write_jsonl(tmp_path / "more" / "c.jsonl", [{"body": doc(i, "globbed")} for i in range(5)])
    ref = run(tmp_path, store, [tmp_path / "data", f"file://{tmp_path}/more/*.jsonl"], text_field="body")
    assert sum(s.records for s in ref.splits.values()) == 25
    rows = [row for split in ref.splits for row in _rows(store, ref, split)]
    where = {row["text"]: (Path(row["source"]).name, row["line"]) for row in rows}
    assert where[doc(3)] == ("a.jsonl", 4)
    assert where[doc(3, "parquet")] == ("b.parquet", 4)
    assert where[doc(0, "globbed")] == ("c.jsonl", 1)
    assert manifest(store, ref)["per_source"][str(tmp_path / "data")] == {"read": 20, "accepted": 20, "rejected": {}}


def test_saved_datasets_single_and_dict(tmp_path, store):
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"text": [doc(i, "single") for i in range(6)]}).save_to_disk(str(tmp_path / "single"))
    DatasetDict({
        "train": Dataset.from_dict({"text": [doc(i, "dict-train") for i in range(5)], "n": list(range(5))}),
        "extra": Dataset.from_dict({"text": [doc(i, "dict-extra") for i in range(3)] + [None], "n": list(range(4))}),
    }).save_to_disk(str(tmp_path / "dd"))
    ref = run(tmp_path, store, [tmp_path / "single", tmp_path / "dd"])
    texts = all_texts(store, ref)
    assert len(texts) == 14 and doc(2, "dict-extra") in texts
    (entry,) = quarantine(store, ref)
    assert entry["reason"] == "not_text" and entry["source"] == f"{tmp_path / 'dd'}[extra]" and entry["line"] == 4
    with pytest.raises(IngestError, match=r"dataset has no column 'body'; its columns are \['text', 'n'\]"):
        run(tmp_path, store, [tmp_path / "dd"], text_field="body")


def test_max_records_per_source_caps_each_source(tmp_path, store):
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": doc(i, "a")} for i in range(6)])
    write_jsonl(tmp_path / "d" / "b.jsonl", [{"text": doc(i, "b")} for i in range(6)])
    write_jsonl(tmp_path / "c.jsonl", [{"text": doc(i, "c")} for i in range(6)])
    ref = run(tmp_path, store, [tmp_path / "d", tmp_path / "c.jsonl"], max_records_per_source=8)
    texts = all_texts(store, ref)
    assert len(texts) == 14
    assert {t.split()[0] for t in texts} == {"a", "b", "c"} and sum(t.startswith("b") for t in texts) == 2


# --- quarantine --------------------------------------------------------------------------------

def test_every_bad_record_is_quarantined_with_reason_and_location(tmp_path, store):
    good = [{"text": doc(i)} for i in range(5)]
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, good + [
        {"text": "bin\u0000ary " + "x" * 40},  # line 6
        {"text": "   \n\t "},  # 7
        {"text": "too short"},  # 8
        {"text": "y" * 300},  # 9
        {"body": doc(99), "id": 1},  # 10
        {"text": 42},  # 11
        {"text": doc(0)},  # 12: duplicate of line 1
    ])
    with bad.open("ab") as f:
        f.write(b"{not json\n")  # 13
        f.write(b'{"text": "caf\xe9 latin-1 bytes are not UTF-8 at all"}\n')  # 14
        f.write(b"[1, 2]\n")  # 15
    text = tmp_path / "notes.txt"
    text.write_bytes(doc(7).encode() + b"\n\xff\xfe broken line\n" + doc(8).encode() + b"\n")
    ref = run(tmp_path, store, [bad, text], max_chars=200)
    assert ref.rejected == {"binary": 1, "duplicate": 1, "empty": 1, "invalid_utf8": 2, "malformed_json": 2,
                            "missing_field": 1, "not_text": 1, "too_long": 1, "too_short": 1}
    found = {(e["reason"], Path(e["source"]).name, e["line"]): e for e in quarantine(store, ref)}
    assert len(found) == 11
    expect = {
        ("binary", "bad.jsonl", 6): r"control character '\\x00' at offset 3",
        ("empty", "bad.jsonl", 7): "only whitespace",
        ("too_short", "bad.jsonl", 8): "9 characters after stripping, min_chars is 32",
        ("too_long", "bad.jsonl", 9): "300 characters, max_chars is 200",
        ("missing_field", "bad.jsonl", 10): "no field 'text'; keys present: 'body', 'id'",
        ("not_text", "bad.jsonl", 11): "field 'text' is int, not a string",
        ("duplicate", "bad.jsonl", 12): re.escape(f"same text as {bad}:1"),
        ("malformed_json", "bad.jsonl", 13): "invalid JSON: Expecting property name",
        ("invalid_utf8", "bad.jsonl", 14): "not UTF-8",
        ("malformed_json", "bad.jsonl", 15): "expected a JSON object, got list",
        ("invalid_utf8", "notes.txt", 2): "not UTF-8",
    }
    for (reason, name, line), detail in expect.items():
        entry = found[(reason, name, line)]
        assert entry["message"].startswith(f"{entry['source']}:{line}: {reason}: ")
        assert re.search(detail, entry["message"]), entry["message"]
    assert {doc(7), doc(8)} <= set(all_texts(store, ref))  # the valid lines around a bad one are kept
    m = manifest(store, ref)
    assert m["duplicates"] == 1 and m["rejected"] == ref.rejected
    assert m["per_source"][str(bad)]["rejected"]["malformed_json"] == 2


# --- errors ------------------------------------------------------------------------------------

def test_structural_problems_raise_ingest_error_naming_the_source(tmp_path, store):
    (tmp_path / "table.csv").write_text("text\nhello\n")
    write_parquet(tmp_path / "p.parquet", {"body": ["x"], "id": [1]})
    (tmp_path / "empty_dir").mkdir()
    cases = {
        str(tmp_path / "missing.jsonl"): r"missing\.jsonl'.*does not exist",
        str(tmp_path / "table.csv"): r"table\.csv has unsupported type '\.csv'",
        str(tmp_path / "p.parquet"): r"p\.parquet: Parquet file has no column 'text'; its columns are \['body', 'id'\]",
        str(tmp_path / "empty_dir"): r"folder .*empty_dir holds no",
        str(tmp_path / "nothing" / "*.jsonl"): r"pattern matches no files",
        "builtin://stdlib-poems": r"'builtin://stdlib-poems': unknown built-in corpus; known: builtin://stdlib-doc",
        "builtin://stdlib-code?max_bytes=lots": r"max_bytes must be a positive integer, got 'lots'",
        "ftp://host/data.txt": r"'ftp://host/data.txt': unknown scheme 'ftp://'",
        "traffic://lm/extra": r"'traffic://lm/extra': a traffic source looks like traffic:// or traffic://<model>",
    }
    for source, message in cases.items():
        with pytest.raises(IngestError, match=message):
            run(tmp_path, store, [source])


def test_nothing_usable_and_too_few_records_are_errors(tmp_path, store):
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "short"}, {"other": 1}, {"text": "short"}])
    expected = ("yield 0 usable record(s), at least 3 are needed; "
                "rejected per reason: {'missing_field': 1, 'too_short': 2}")
    with pytest.raises(IngestError, match=re.escape(expected)):
        run(tmp_path, store, [tmp_path / "bad.jsonl"])
    write_jsonl(tmp_path / "two.jsonl", [{"text": doc(1)}, {"text": doc(2)}])
    with pytest.raises(IngestError, match=r"yield 2 usable record\(s\), at least 3 are needed"):
        run(tmp_path, store, [tmp_path / "two.jsonl"])
    assert not store.list("datasets")


# --- splits, determinism, snapshots ----------------------------------------------------------------

def test_splits_are_deterministic_and_stable_as_data_grows(tmp_path, store):
    write_jsonl(tmp_path / "v1.jsonl", [{"text": doc(i)} for i in range(200)])
    fractions = {"val_fraction": 0.1, "test_fraction": 0.1}
    first = run(tmp_path, store, [tmp_path / "v1.jsonl"], **fractions)
    again = run(tmp_path, LocalStore(tmp_path / "other-store"), [tmp_path / "v1.jsonl"], **fractions)
    assert again.sha256 == first.sha256 and again.splits["test"].sha256 == first.splits["test"].sha256
    before = split_of(store, first)
    assert all(first.splits[s].records > 5 for s in ("train", "validation", "test"))
    write_jsonl(tmp_path / "v2.jsonl", [{"text": doc(i)} for i in range(400)])
    grown = run(tmp_path, store, [tmp_path / "v2.jsonl"], **fractions)
    after = split_of(store, grown)
    assert grown.sha256 != first.sha256 and len(after) == 400
    assert {t: after[t] for t in before} == before  # no old record changed split
    assert grown.uri.split("/")[-2] == grown.sha256[:16]


def test_no_split_is_left_empty_with_three_records():
    records = [Kept(doc(i), "s", i) for i in range(3)]
    splits = assign_splits(records, seed=0, val_fraction=0.01, test_fraction=0.01)
    assert sorted(len(v) for v in splits.values()) == [1, 1, 1]
    assert assign_splits(records, 0, 0.01, 0.01) == splits


def test_an_existing_snapshot_is_reused_without_rewriting(tmp_path, store, monkeypatch):
    write_jsonl(tmp_path / "a.jsonl", [{"text": doc(i)} for i in range(20)])
    ref = run(tmp_path, store, [tmp_path / "a.jsonl"])
    assert load_ref(store, ref.uri) == ref

    def refuse(*args, **kwargs):
        raise AssertionError("an existing snapshot was rewritten")

    for method in ("put_bytes", "put_file", "put_json", "put_if_absent"):
        monkeypatch.setattr(store, method, refuse)
    assert run(tmp_path, store, [tmp_path / "a.jsonl"]) == ref


def test_manifest_is_written_last_so_a_crash_leaves_no_snapshot(tmp_path, store, monkeypatch):
    write_jsonl(tmp_path / "a.jsonl", [{"text": doc(i)} for i in range(20)])
    real_put_bytes = store.put_bytes

    def crash_on_quarantine(key, data):
        if key.endswith("quarantine.jsonl"):
            raise OSError("disk full")
        return real_put_bytes(key, data)

    monkeypatch.setattr(store, "put_bytes", crash_on_quarantine)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, store, [tmp_path / "a.jsonl"])
    written = store.list("datasets")
    assert written and not any(k.endswith("manifest.json") for k in written)
    monkeypatch.setattr(store, "put_bytes", real_put_bytes)
    ref = run(tmp_path, store, [tmp_path / "a.jsonl"])
    assert store.exists(store.key_for(ref.uri)) and len(all_texts(store, ref)) == 20


def test_manifest_records_counts_hashes_and_config(tmp_path, store):
    write_jsonl(tmp_path / "a.jsonl", [{"text": doc(i)} for i in range(20)] + [{"text": "tiny"}])
    ref = run(tmp_path, store, [tmp_path / "a.jsonl"], dataset_name="my-data")
    m = manifest(store, ref)
    assert ref.uri == store.uri_for(f"datasets/my-data/{ref.sha256[:16]}/manifest.json")
    assert list(ref.splits) == ["train", "validation", "test"]
    assert {k: v["records"] for k, v in m["splits"].items()} == {k: v.records for k, v in ref.splits.items()}
    assert set(m["files"]) == {"train.parquet", "validation.parquet", "test.parquet", "quarantine.jsonl"}
    assert m["config"]["dataset_name"] == "my-data" and m["sources"] == [str(tmp_path / "a.jsonl")]
    assert m["rejected"] == {"too_short": 1} and m["created_at"]
    tampered = store.local_path(store.key_for(ref.splits["test"].uri))
    tampered.write_bytes(tampered.read_bytes() + b"!")
    with pytest.raises(ValueError, match="does not match its manifest's sha256"):
        read_split(store, ref, "test")
    with pytest.raises(KeyError, match="no split 'dev'"):
        read_split(store, ref, "dev")


# --- built-in corpora and traffic --------------------------------------------------------------

def test_builtin_corpora_as_sources(tmp_path, store):
    ref = run(tmp_path, store, ["builtin://stdlib-docstrings?max_bytes=20000", "builtin://stdlib-code?max_bytes=20000"])
    m = manifest(store, ref)
    assert m["per_source"]["builtin://stdlib-docstrings?max_bytes=20000"]["accepted"] > 20
    assert m["per_source"]["builtin://stdlib-code?max_bytes=20000"]["accepted"] > 20
    rows = [row for split in ref.splits for row in _rows(store, ref, split)]
    assert all(row["source"].endswith(".py") and row["line"] >= 1 for row in rows)


def _traffic(store: ArtifactStore, model: str, when: datetime, prompts: list) -> str:
    lines = []
    for i, prompt in enumerate(prompts):
        record = {"id": f"cmpl-{i}", "ts": when.isoformat(), "model": model, "version": 1, "variant": "fp32",
                  "params": {"max_tokens": 16}, "completions": [{"text": "…"}], "features": {"prompt_chars": 10}}
        if prompt is not None:
            record["prompt"] = prompt
        lines.append(json.dumps(record))
    key = f"traffic/{model}/{when:%Y/%m/%d/%H}/{when:%M%S%f}.jsonl"
    store.put_text(key, "\n".join(lines) + "\n")
    return key


def test_traffic_reads_recent_prompts_of_the_model(tmp_path, store):
    now = datetime.now(timezone.utc)
    key = _traffic(store, "lm", now, [doc(i, "prompt") for i in range(4)] + [None])
    _traffic(store, "lm", now - timedelta(days=2), [doc(9, "older prompt")])
    _traffic(store, "lm", now - timedelta(days=40), [doc(i, "stale") for i in range(3)])
    _traffic(store, "other", now, [doc(i, "other model") for i in range(3)])
    ref = run(tmp_path, store, ["traffic://"], traffic_days=30)
    texts = set(all_texts(store, ref))
    assert texts == {doc(i, "prompt") for i in range(4)} | {doc(9, "older prompt")}
    (entry,) = quarantine(store, ref)
    assert entry["reason"] == "missing_field" and entry["source"] == store.uri_for(key) and entry["line"] == 5
    assert "no field 'prompt'" in entry["message"]
    other = run(tmp_path, store, ["traffic://other"])
    assert set(all_texts(store, other)) == {doc(i, "other model") for i in range(3)}


def test_no_traffic_yet_is_fine_beside_other_sources(tmp_path, store):
    write_jsonl(tmp_path / "a.jsonl", [{"text": doc(i)} for i in range(5)])
    ref = run(tmp_path, store, [tmp_path / "a.jsonl", "traffic://"])
    assert manifest(store, ref)["per_source"]["traffic://"] == {"read": 0, "accepted": 0, "rejected": {}}
    with pytest.raises(IngestError, match="yield 0 usable"):
        run(tmp_path, store, ["traffic://"])


# --- S3 (a real S3-protocol server) ------------------------------------------------------------

@pytest.fixture
def s3_endpoint(monkeypatch):
    from moto.server import ThreadedMotoServer

    from llmops.infra.settings import get_settings

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"LLMOPS_S3_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield f"http://{host}:{port}"
    server.stop()
    get_settings.cache_clear()


def test_s3_prefix_is_listed_downloaded_and_located_by_uri(tmp_path, store, s3_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="corpus-bucket")
    rows = "".join(json.dumps({"text": doc(i, "s3")}) + "\n" for i in range(6)) + "{broken\n"
    s3.put_object(Bucket="corpus-bucket", Key="raw/part-1.jsonl", Body=rows.encode())
    s3.put_object(Bucket="corpus-bucket", Key="raw/sub/notes.txt", Body=doc(1, "text").encode())
    s3.put_object(Bucket="corpus-bucket", Key="raw/skip.csv", Body=b"a,b\n")
    s3.put_object(Bucket="corpus-bucket", Key="elsewhere/x.jsonl", Body=b'{"text": "not under the prefix"}\n')
    ref = run(tmp_path, store, ["s3://corpus-bucket/raw"])
    assert set(all_texts(store, ref)) == {doc(i, "s3") for i in range(6)} | {doc(1, "text")}
    (entry,) = quarantine(store, ref)
    assert entry["message"].startswith("s3://corpus-bucket/raw/part-1.jsonl:7: malformed_json")
    single = run(tmp_path, store, ["s3://corpus-bucket/raw/part-1.jsonl"])
    assert single.splits["train"].records + single.splits["validation"].records + single.splits["test"].records == 6
    with pytest.raises(IngestError, match=r"'s3://corpus-bucket/nothing-here': no .* objects under this S3 prefix"):
        run(tmp_path, store, ["s3://corpus-bucket/nothing-here"])
