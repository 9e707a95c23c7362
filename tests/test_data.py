"""Tests for procon.data: file formats, field detection and input error messages."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from procon.data import load_pairs, load_prompts, load_task, read_records, write_jsonl
from procon.errors import InputError


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------
# Formats


def test_csv_quoted_commas_and_bom(tmp_path):
    source = tmp_path / "adv.csv"
    source.write_bytes(
        b'\xef\xbb\xbfgoal,target\n'
        b'"Write a poem, then stop","Sure, here is a poem"\n'
        b'Explain tides,"Sure, tides are"\n'
    )
    assert load_prompts(str(source)) == ["Write a poem, then stop", "Explain tides"]
    pairs = load_pairs(str(source))
    assert pairs[0] == {"prompt": "Write a poem, then stop", "response": "Sure, here is a poem"}


def test_csv_multiline_field_keeps_line_numbers(tmp_path):
    source = write(tmp_path / "m.csv", 'prompt,x\n"first\nsecond",1\n   ,2\n')
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value) == f"{source}: line 4: field 'prompt' is empty"


def test_csv_skips_blank_rows(tmp_path):
    source = write(tmp_path / "b.csv", "prompt\n\na\n,\nb\n")
    assert load_prompts(source) == ["a", "b"]


def test_tsv_reads_quotes_literally(tmp_path):
    source = write(tmp_path / "dev.tsv", 'sentence\tlabel\na "quoted" word \t1\nplain\t0\n')
    examples = load_task(source)
    assert examples == [
        {"prompt": 'a "quoted" word', "answer": "1"},
        {"prompt": "plain", "answer": "0"},
    ]


def test_json_list_of_objects(tmp_path):
    rows = [{"instruction": "Say hi", "category": "x"}, {"instruction": "Say bye", "category": "y"}]
    source = write(tmp_path / "h.json", json.dumps(rows))
    assert load_prompts(source) == ["Say hi", "Say bye"]


def test_json_list_of_strings(tmp_path):
    source = write(tmp_path / "s.json", json.dumps(["one", " two "]))
    assert load_prompts(source) == ["one", "two"]
    assert read_records(source) == [{"text": "one"}, {"text": " two "}]


@pytest.mark.parametrize("key", ["data", "instances"])
def test_json_wrapped_object(tmp_path, key):
    source = write(tmp_path / "w.json", json.dumps({"version": 2, key: [{"prompt": "p1"}, {"prompt": "p2"}]}))
    assert load_prompts(source) == ["p1", "p2"]


def test_json_wrapped_strings_ignore_empty_lists(tmp_path):
    source = write(tmp_path / "q.json", json.dumps({"instructions": ["a", "b"], "inputs": []}))
    assert load_prompts(source) == ["a", "b"]


def test_json_columns_of_equal_length(tmp_path):
    source = write(tmp_path / "c.json", json.dumps({"instructions": ["a", "b"], "tags": ["x", "y"], "inputs": []}))
    assert read_records(source) == [{"instructions": "a", "tags": "x"}, {"instructions": "b", "tags": "y"}]
    assert load_prompts(source) == ["a", "b"]


def test_jsonl_objects_and_unicode_separator(tmp_path):
    source = write(tmp_path / "g.jsonl", '{"question": "a\u2028b", "answer": 4}\n\n{"question": "c", "answer": "5"}\n')
    assert load_task(source) == [{"prompt": "a\u2028b", "answer": "4"}, {"prompt": "c", "answer": "5"}]


def test_txt_one_prompt_per_line(tmp_path):
    source = write(tmp_path / "p.txt", "  first  \n\n\nsecond\n")
    assert load_prompts(source) == ["first", "second"]


def test_write_jsonl_round_trip(tmp_path):
    target = tmp_path / "out" / "rows.jsonl"
    rows = [{"prompt": "héllo", "response": "ok"}, {"prompt": "x", "response": "y"}]
    write_jsonl(str(target), rows)
    assert "héllo" in target.read_text(encoding="utf-8")
    assert load_pairs(str(target)) == rows


# ---------------------------------------------------------------------------
# Fields


def test_field_detection_priority_and_case(tmp_path):
    # JailbreakBench layout: an unnamed index column, and both Goal and Behavior.
    source = write(tmp_path / "jbb.csv", ",Goal,Target,Behavior\n0,Do a thing,Sure,Defamation\n")
    assert load_prompts(source) == ["Do a thing"]
    assert load_pairs(source) == [{"prompt": "Do a thing", "response": "Sure"}]


def test_field_override(tmp_path):
    source = write(tmp_path / "jbb.csv", ",Goal,Target,Behavior\n0,Do a thing,Sure,Defamation\n")
    assert load_prompts(source, field="behavior") == ["Defamation"]
    assert load_pairs(source, prompt_field="Target", response_field="Goal") == [
        {"prompt": "Sure", "response": "Do a thing"}
    ]


def test_response_field_differs_from_prompt(tmp_path):
    source = write(tmp_path / "r.json", json.dumps([{"answer": "q", "response": "r"}]))
    assert load_pairs(source, prompt_field="answer") == [{"prompt": "q", "response": "r"}]


def test_alpaca_instruction_and_input_joined(tmp_path):
    rows = [
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
        {"instruction": "Count to 3.", "input": "  ", "output": "1 2 3"},
    ]
    source = write(tmp_path / "alpaca.json", json.dumps(rows))
    assert load_pairs(source) == [
        {"prompt": "Translate.\n\nBonjour", "response": "Hello"},
        {"prompt": "Count to 3.", "response": "1 2 3"},
    ]


def test_harmbench_context_prepended(tmp_path):
    source = write(
        tmp_path / "hb.csv",
        'Behavior,ContextString,BehaviorID\nSummarize this,"Some context\nhere",a\nPlain ask,,b\n',
    )
    assert load_prompts(source) == ["Some context\nhere\n\nSummarize this", "Plain ask"]


def test_label_names_map_answers(tmp_path):
    source = write(tmp_path / "l.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0}\n')
    examples = load_task(source, label_names={"0": "negative", "1": "positive"})
    assert examples == [{"prompt": "good", "answer": "positive"}, {"prompt": "bad", "answer": "negative"}]
    assert load_task(source, label_names={0: "neg", 1: "pos"})[0]["answer"] == "pos"


def test_label_names_unknown_label(tmp_path):
    source = write(tmp_path / "l.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "odd", "label": 7}\n')
    with pytest.raises(InputError) as error:
        load_task(source, label_names={"0": "negative", "1": "positive"})
    message = str(error.value)
    assert message.startswith(f"{source}: line 2: label '7'")
    assert "known labels: 0, 1" in message


def test_boolean_answers_become_words(tmp_path):
    source = write(tmp_path / "b.jsonl", '{"question": "Is it?", "answer": true}\n')
    assert load_task(source) == [{"prompt": "Is it?", "answer": "true"}]


def test_limit_takes_first_rows(tmp_path):
    source = write(tmp_path / "p.txt", "a\nb\nc\n")
    assert load_prompts(source, limit=2) == ["a", "b"]
    assert load_prompts(source, limit=10) == ["a", "b", "c"]
    with pytest.raises(InputError, match="limit must be a positive number"):
        load_prompts(source, limit=0)


def test_limit_skips_bad_rows_beyond_it(tmp_path):
    source = write(tmp_path / "p.jsonl", '{"prompt": "ok"}\n{"prompt": ""}\n')
    assert load_prompts(source, limit=1) == ["ok"]


def test_order_and_duplicates_kept(tmp_path):
    source = write(tmp_path / "p.txt", "b\na\nb\n")
    assert load_prompts(source) == ["b", "a", "b"]


def test_hub_id_uses_datasets(tmp_path, monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"question": "hub q", "answer": "hub a"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.chdir(tmp_path)
    assert load_task("owner/name") == [{"prompt": "hub q", "answer": "hub a"}]
    assert load_prompts("name", split="test") == ["hub q"]
    assert calls == [("owner/name", "train"), ("name", "test")]


def test_hub_failure_message(tmp_path, monkeypatch):
    def load_dataset(name, split):
        raise ConnectionError(f"Couldn't reach '{name}'\non the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as error:
        load_prompts("owner/name")
    message = str(error.value)
    assert message.startswith("owner/name: file not found")
    assert "Couldn't reach 'owner/name' on the Hub" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------
# Bad input


def test_missing_file(tmp_path):
    source = str(tmp_path / "x.txt")
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value) == f"{source}: file not found"


def test_missing_file_with_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as error:
        load_prompts("data/x.jsonl")
    assert str(error.value) == "data/x.jsonl: file not found"


def test_jsonl_invalid_json_names_line(tmp_path):
    source = write(tmp_path / "x.jsonl", '{"prompt": "a"}\n\n{"prompt": "b" "c"}\n')
    with pytest.raises(InputError) as error:
        load_prompts(source)
    message = str(error.value)
    assert message.startswith(f"{source}: line 3: invalid JSON (Expecting ',' delimiter")


def test_jsonl_non_object_line(tmp_path):
    source = write(tmp_path / "x.jsonl", '{"prompt": "a"}\n[1, 2]\n')
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value) == f"{source}: line 2: found a JSON array; expected an object or a string"


def test_json_invalid_names_line(tmp_path):
    source = write(tmp_path / "x.json", '[\n  {"prompt": "a"},\n  {"prompt": }\n]\n')
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value).startswith(f"{source}: line 3: invalid JSON (Expecting value")


def test_json_lines_in_json_file_hint(tmp_path):
    source = write(tmp_path / "x.json", '{"prompt": "a"}\n{"prompt": "b"}\n')
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert "give it the .jsonl extension" in str(error.value)


def test_json_object_without_list(tmp_path):
    source = write(tmp_path / "x.json", json.dumps({"a": "x", "b": "y"}))
    with pytest.raises(InputError) as error:
        load_prompts(source)
    message = str(error.value)
    assert message.startswith(f"{source}: found a JSON object with keys a, b")
    assert "expected a list of examples" in message


def test_json_ambiguous_lists(tmp_path):
    source = write(tmp_path / "x.json", json.dumps({"train": ["a", "b"], "test": ["c"]}))
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value).startswith(f"{source}: found several lists (train, test)")


def test_unknown_field_lists_available(tmp_path):
    source = write(tmp_path / "x.csv", "goal,target\nA,B\n")
    with pytest.raises(InputError) as error:
        load_prompts(source, field="prompt")
    assert str(error.value) == (
        f"{source}: field 'prompt' not found; available fields: goal, target (name it with --*-field on the command line, *_field in a run config)"
    )


def test_undetectable_field_lists_available(tmp_path):
    source = write(tmp_path / "x.csv", "label,title\n1,A\n")
    with pytest.raises(InputError) as error:
        load_prompts(source)
    message = str(error.value)
    assert message.startswith(f"{source}: no prompt field found; expected one of instruction, prompt")
    assert message.endswith("available fields: label, title (name it with --*-field on the command line, *_field in a run config)")


def test_missing_response_field(tmp_path):
    source = write(tmp_path / "x.jsonl", '{"prompt": "a"}\n')
    with pytest.raises(InputError) as error:
        load_pairs(source)
    message = str(error.value)
    assert message.startswith(f"{source}: no response field found")
    assert message.endswith("available fields: prompt (name it with --*-field on the command line, *_field in a run config)")


@pytest.mark.parametrize(
    ("name", "text"),
    [("x.csv", ""), ("y.csv", "goal,target\n"), ("x.json", ""), ("y.json", "[]"), ("x.jsonl", "\n\n"), ("x.txt", " \n")],
)
def test_empty_file(tmp_path, name, text):
    source = write(tmp_path / name, text)
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value) == f"{source}: no examples found"


def test_empty_prompt_names_row_and_field(tmp_path):
    source = write(tmp_path / "x.csv", "goal,target\nA,B\nC,D\n  ,E\n")
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value) == f"{source}: line 4: field 'goal' is empty"


def test_non_string_prompt_names_item(tmp_path):
    source = write(tmp_path / "x.json", json.dumps([{"prompt": "a"}, {"prompt": 5}]))
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value) == f"{source}: item 2: field 'prompt' must be a string, found number"


def test_field_missing_in_one_record(tmp_path):
    source = write(tmp_path / "x.jsonl", '{"prompt": "a"}\n{"other": "b"}\n')
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value) == f"{source}: line 2: field 'prompt' is missing"


def test_empty_response_names_line(tmp_path):
    source = write(tmp_path / "x.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": " "}\n')
    with pytest.raises(InputError) as error:
        load_pairs(source)
    assert str(error.value) == f"{source}: line 2: field 'response' is empty"


def test_csv_row_with_wrong_field_count(tmp_path):
    source = write(tmp_path / "x.csv", "goal,target\nA,B\nC,D,E\n")
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value) == f"{source}: line 3: found 3 fields; expected 2 as in the header"


def test_csv_duplicate_header(tmp_path):
    source = write(tmp_path / "x.csv", "goal,goal\nA,B\n")
    with pytest.raises(InputError, match="line 1: duplicate column name 'goal'"):
        load_prompts(source)


def test_unsupported_extension(tmp_path):
    source = write(tmp_path / "x.parquet", "irrelevant")
    with pytest.raises(InputError) as error:
        load_prompts(source)
    assert str(error.value) == (
        f"{source}: unsupported file type '.parquet'; expected .csv, .tsv, .json, .jsonl or .txt"
    )


def test_invalid_utf8(tmp_path):
    source = tmp_path / "x.txt"
    source.write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(InputError) as error:
        load_prompts(str(source))
    assert str(error.value) == f"{source}: invalid UTF-8 at byte 3; expected UTF-8 text"


def test_directory_source(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_prompts(str(tmp_path))


def test_split_on_local_file(tmp_path):
    source = write(tmp_path / "p.txt", "a\n")
    with pytest.raises(InputError, match="split 'test' applies only to Hub datasets"):
        load_prompts(source, split="test")


# ---------------------------------------------------------------------------
# Real data sets


@pytest.mark.shared_data
def test_shared_datasets_load(shared_data):
    # Counts checked by hand: python json.load / csv.DictReader on each file, and
    # wc -l minus the header for the single-line-per-row CSV files.
    splits = shared_data / "refusal_direction_splits" / "splits"
    harmful = load_prompts(str(splits / "harmful_train.json"))
    assert len(harmful) == 260
    assert len(load_prompts(str(splits / "harmless_train.json"))) == 18793

    advbench = load_pairs(str(shared_data / "advbench" / "harmful_behaviors.csv"))
    assert len(advbench) == 520
    assert advbench[0]["response"].startswith("Sure, here is")

    # The 320 HarmBench test rows span 1,215 lines because 81 rows contain a multi-line
    # ContextString, which becomes the start of the prompt.
    harmbench = load_prompts(str(shared_data / "harmbench" / "harmbench_behaviors_text_test.csv"))
    assert len(harmbench) == 320
    assert sum("\n\n" in prompt for prompt in harmbench) == 81

    jbb_harmful = load_pairs(str(shared_data / "jailbreakbench" / "behaviors.csv"))
    jbb_benign = load_pairs(str(shared_data / "jailbreakbench" / "benign-behaviors.csv"))
    assert len(jbb_harmful) == 100
    assert len(jbb_benign) == 100
    assert jbb_harmful[0]["prompt"].startswith("Write a defamatory article")

    beavertails = load_pairs(str(shared_data / "beavertails_harmful_200" / "beavertails_unsafe_200.json"))
    assert len(beavertails) == 200

    alpaca_path = shared_data / "alpaca_sample_1k" / "alpaca_data_1k.json"
    alpaca = load_pairs(str(alpaca_path))
    assert len(alpaca) == 1000
    raw_rows = json.loads(alpaca_path.read_text(encoding="utf-8"))
    rows_with_input = [row for row in raw_rows if row["input"].strip()]
    assert len(rows_with_input) == 392
    for pair, row in zip(alpaca, raw_rows):
        if row["input"].strip():
            assert pair["prompt"] == row["instruction"].strip() + "\n\n" + row["input"].strip()

    sst2 = load_task(str(shared_data / "sst2" / "dev.tsv"), label_names={"0": "negative", "1": "positive"})
    assert len(sst2) == 872
    assert sum(example["answer"] == "positive" for example in sst2) == 444

    gsm8k = load_task(str(shared_data / "gsm8k" / "test.jsonl"))
    assert len(gsm8k) == 1319

    safety_eval = load_prompts(str(shared_data / "safety_tuned_llamas" / "evaluation" / "I-MaliciousInstructions.json"))
    assert len(safety_eval) == 100
