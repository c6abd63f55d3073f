"""edgekiln's JSON notes in the tuning cache: bounded reads that fall back to empty, and
whole replacements that concurrent writers cannot tear or trip over."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from edgekiln.compile.backends.tvm import notes


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"", dict),
        (b"{not json", dict),
        (b"[1, 2]", dict),  # a list where a dict belongs
        (b'{"a": 1}', list),
        (b"\xff\xfe", list),
        (b"[" + b"1," * (notes.MAX_BYTES // 2) + b"1]", list),  # over the bound
    ],
)
def test_a_bad_note_reads_as_empty(tmp_path, content, kind) -> None:
    note = tmp_path / "note.json"
    note.write_bytes(content)
    assert notes.read(note, kind) == kind()


def test_a_missing_note_reads_as_empty_and_a_written_one_reads_back(tmp_path) -> None:
    note = tmp_path / "sub" / "note.json"
    assert notes.read(note, dict) == {}
    notes.write(note, {"b": [1, 2], "a": "x"})
    assert notes.read(note, dict) == {"a": "x", "b": [1, 2]}
    assert [p.name for p in note.parent.iterdir()] == ["note.json"]  # no staging file left


def _write_many(path: str, tag: int) -> None:
    from pathlib import Path

    for i in range(200):
        notes.write(Path(path), [tag, i])


def test_two_processes_writing_one_note_neither_fail_nor_tear_it(tmp_path) -> None:
    note = tmp_path / "note.json"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_many, args=(str(note), tag)) for tag in (1, 2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0, 0]
    tag, last = json.loads(note.read_text())
    assert tag in (1, 2) and last == 199
    assert [p.name for p in tmp_path.iterdir()] == ["note.json"]
