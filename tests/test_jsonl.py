"""One JSONL reader: lines end at "\n" only, so a record holding a raw U+2028 (legal inside a JSON
string) stays one record, in files and in uploaded bodies alike."""

from __future__ import annotations

import json
from pathlib import Path

from hyfunc.data.loaders import load_xlam
from hyfunc.jsonl import jsonl_records, jsonl_text_records

RECORD = {"query": "say\u2028hello\u2029there\x85now", "tools": [], "answers": []}


def test_separators_inside_strings_do_not_split_a_record(tmp_path: Path) -> None:
    text = json.dumps(RECORD, ensure_ascii=False) + "\n\n" + "{not json\n" + json.dumps({"n": 2}) + "\n"
    path = tmp_path / "r.jsonl"
    path.write_text(text, encoding="utf-8")
    for records in (list(jsonl_records(path)), list(jsonl_text_records(text))):
        assert [n for n, _ in records] == [1, 3, 4]  # blank line 2 skipped, numbering kept
        assert records[0][1] == RECORD and records[2][1] == {"n": 2}
        assert isinstance(records[1][1], json.JSONDecodeError)


def test_xlam_loader_reads_such_a_record_whole(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    weather = {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}
    record = {"query": "weather in Lyon\u2028please", "tools": [weather], "answers": [{"name": "get_weather",
                                                                                       "arguments": {"city": "Lyon"}}]}
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    examples, report = load_xlam(path)
    assert report.errors == [] and len(examples) == 1 and examples[0].query == "weather in Lyon\u2028please"
