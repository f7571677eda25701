"""Redaction of captured prompts: the default patterns, a `module:function` hook, config validation, and the
traffic:// ingest path that applies them."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Optional

import pytest
from pydantic import ValidationError

from llmops.infra.config import DataConfig, RedactSettings
from llmops.infra.config.data import DEFAULT_REDACT_PATTERNS
from llmops.infra.store import open_store
from llmops.infra.traffic.log import write_records
from llmops.models.data import ingest, read_split
from llmops.models.data.redaction import RedactionError, Redactor, load_hook
from llmops.monitoring.synthetic import synthetic_records

HERE = "tests.unit.models.data.test_redaction"  # this module, as a hook spec names it (tests/ is on the path)


# --- hooks referenced as f"{HERE}:<name>" (imported by llmops through importlib) ----------------------------------

def rename_project(text: str) -> Optional[str]:
    return text.replace("Project Bluebird", "[PROJECT]")


def drop_marked(text: str) -> Optional[str]:
    return None if "DROP-THIS-RECORD" in text else text


def returns_number(text: str) -> Optional[str]:
    return 42  # type: ignore[return-value]


def echo(text: str) -> Optional[str]:
    return text


NOT_CALLABLE = "a string, not a function"


def redact(text: str, **settings) -> tuple[Optional[str], bool]:
    return Redactor(RedactSettings(**settings))(text)


# --- the default patterns ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("secret", [
    "jane.doe+billing@example.co.uk",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111111111111111",
    "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123456",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a1B2c3D4e5" * 4,
    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
])
def test_default_patterns_redact_secrets_and_personal_data(secret):
    text, changed = redact(f"please use {secret} for the request, thanks")
    assert changed
    assert secret not in text
    assert text == "please use [REDACTED] for the request, thanks"


def test_every_secret_in_one_text_is_redacted_and_the_prose_around_them_kept():
    prompt = ("Hi, I'm Jane (jane@corp.example), card 5500-0000-0000-0004 expires soon. Our key sk-"
              + "x" * 24 + " and AKIAABCDEFGHIJKLMNOP leaked; header authorization: bearer " + "t" * 32 + " end")
    text, changed = redact(prompt)
    assert changed
    assert text == ("Hi, I'm Jane ([REDACTED]), card [REDACTED] expires soon. Our key [REDACTED] and [REDACTED] "
                    "leaked; header authorization: [REDACTED] end")


@pytest.mark.parametrize("prose", [
    "In 2024 the build on line 42 of setup.py failed under Python 3.11.4; see PEP 8 and RFC 2616.",
    "Call extension 5123 between 9 and 17, or dial +1 415 555 0100 (ten digits are not a card).",
    "The server at 192.168.0.1 listens on port 8080 since 2023-06-15 12:30.",
    "Version 10.0.19041.1234 and build 20240115 ship together; the answer is 3.14159.",
    "A short skeleton key like sk-abc and the word bearer alone are not secrets; nor is user@localhost.",
])
def test_default_patterns_leave_ordinary_prose_and_short_numbers_alone(prose):
    assert redact(prose) == (prose, False)


@pytest.mark.parametrize("number", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111"])
def test_a_card_number_ending_a_sentence_is_redacted(number):
    text, changed = redact(f"My card number is {number}.")
    assert changed and number not in text


def test_the_defaults_are_the_documented_list_and_the_replacement_is_configurable():
    assert RedactSettings().patterns == DEFAULT_REDACT_PATTERNS
    assert RedactSettings().replacement == "[REDACTED]"
    assert DataConfig().redact == RedactSettings()
    assert redact("write to a@b.io", replacement="<email>") == ("write to <email>", True)
    # own patterns replace the defaults: an e-mail is kept unless a pattern for it is listed
    assert redact("a@b.io and TICKET-1234", patterns=[r"TICKET-\d+"]) == ("a@b.io and [REDACTED]", True)
    assert redact("a@b.io", patterns=[]) == ("a@b.io", False)


# --- the hook ------------------------------------------------------------------------------------------------------

def test_a_hook_named_module_colon_function_is_loaded():
    assert load_hook(f"{HERE}:rename_project")("Project Bluebird ships") == "[PROJECT] ships"


def test_a_hook_rewrites_text_after_the_patterns():
    text, changed = redact("Project Bluebird: mail ops@example.com", hook=f"{HERE}:rename_project")
    assert (text, changed) == ("[PROJECT]: mail [REDACTED]", True)
    assert redact("nothing to change here", hook=f"{HERE}:rename_project") == ("nothing to change here", False)
    # a hook that keeps the text as it is changes nothing
    assert redact("a plain prompt", hook=f"{HERE}:echo") == ("a plain prompt", False)


def test_a_hook_returning_none_drops_the_text():
    assert redact("please DROP-THIS-RECORD now", hook=f"{HERE}:drop_marked") == (None, True)
    assert redact("keep this one", hook=f"{HERE}:drop_marked") == ("keep this one", False)


def test_a_hook_returning_something_other_than_a_string_raises_naming_the_setting():
    redactor = Redactor(RedactSettings(hook=f"{HERE}:returns_number"))
    with pytest.raises(RedactionError, match=r"data\.redact\.hook=.*returns_number.*returned int"):
        redactor("any prompt")


@pytest.mark.parametrize("spec, why", [
    ("no_such_module_for_llmops_tests:fn", "cannot be loaded"),
    (f"{HERE}:no_such_function", "cannot be loaded"),
    (f"{HERE}:NOT_CALLABLE", "not callable"),
])
def test_a_hook_that_cannot_be_used_raises_when_the_redactor_is_built(spec, why):
    with pytest.raises(RedactionError, match=rf"data\.redact\.hook=.*{why}"):
        Redactor(RedactSettings(hook=spec))
    with pytest.raises(RedactionError):
        load_hook(spec)


def test_a_hook_spec_that_is_not_module_colon_function_fails_validation():
    with pytest.raises(ValidationError, match="hook"):
        RedactSettings(hook="just_a_module")


# --- config validation ---------------------------------------------------------------------------------------------

def test_an_invalid_regex_fails_validation_naming_its_index():
    with pytest.raises(ValidationError, match=r"patterns\[1\] '\(unclosed' is not a valid regular expression"):
        RedactSettings(patterns=[r"\d+", "(unclosed"])
    with pytest.raises(ValidationError, match=r"patterns\[0\]"):
        DataConfig(redact={"patterns": ["[a-"]})


# --- traffic:// ingest redacts -------------------------------------------------------------------------------------

def _traffic(store, prompts: list, model: str = "lm") -> None:
    start = datetime.now(timezone.utc) - timedelta(minutes=10)
    records = synthetic_records(len(prompts), seed=1, start=start, model=model)
    for record, prompt in zip(records, prompts):
        record["prompt"] = prompt
    write_records(store, model, records)


def _all_texts(store, ref) -> list[str]:
    return [t for split in ("train", "validation", "test") for t in read_split(store, ref, split)]


def test_traffic_ingest_redacts_prompts(tmp_path):
    store = open_store()
    secret = [f"prompt {i}: please send the invoice to customer{i}@example.com by friday" for i in range(6)]
    plain = [f"prompt {i}: an ordinary question about python packaging and wheels" for i in range(6, 10)]
    _traffic(store, secret + plain)
    ref = ingest(DataConfig(sources=["traffic://"]), store, model_name="lm", cache_dir=tmp_path / "cache")
    texts = _all_texts(store, ref)
    redacted = [f"prompt {i}: please send the invoice to [REDACTED] by friday" for i in range(6)]
    assert sorted(texts) == sorted(redacted + plain)
    assert not any("@example.com" in t for t in texts)
    assert ref.rejected == {}


def test_traffic_ingest_quarantines_what_the_hook_drops_without_keeping_its_text(tmp_path):
    store = open_store()
    kept = [f"prompt {i}: how do I configure the logging of a prefect flow" for i in range(5)]
    dropped = [f"prompt {i}: DROP-THIS-RECORD the confidential merger terms" for i in range(3)]
    _traffic(store, kept + dropped)
    cfg = DataConfig(sources=["traffic://"], redact={"hook": f"{HERE}:drop_marked"})
    ref = ingest(cfg, store, model_name="lm", cache_dir=tmp_path / "cache")
    assert sorted(_all_texts(store, ref)) == sorted(kept)
    assert ref.rejected == {"redaction_dropped": 3}
    lines = store.get_text(store.key_for(ref.quarantine_uri)).splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["reason"] for e in entries] == ["redaction_dropped"] * 3
    assert not any("merger" in line for line in lines)  # the dropped prompt is kept nowhere, previews included


def test_traffic_ingest_with_an_unimportable_hook_fails(tmp_path):
    store = open_store()
    _traffic(store, [f"prompt {i}: a question long enough to be kept as text" for i in range(4)])
    cfg = DataConfig(sources=["traffic://"], redact={"hook": "no_such_module_for_llmops_tests:fn"})
    with pytest.raises(RedactionError):
        ingest(cfg, store, model_name="lm", cache_dir=tmp_path / "cache")


def test_file_sources_are_not_redacted(tmp_path):
    store = open_store()
    rows = [{"text": f"document {i}: maintainers answer at maintainer{i}@example.org"} for i in range(4)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ref = ingest(DataConfig(sources=[str(path)]), store, model_name="lm", cache_dir=tmp_path / "cache")
    assert sorted(_all_texts(store, ref)) == sorted(r["text"] for r in rows)
