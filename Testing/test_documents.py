"""Versioned documents: one reader, one sentence for each way a file can be wrong."""

import json
from pathlib import Path

import pytest

from SCPMNoduleLib.documents import DocumentError, check_document, read_document, read_json
from SCPMNoduleLib.errors import UserInputError

FORMAT, VERSION = "scpm-test-document", 3


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_a_document_of_this_format_and_version_is_returned_as_read(tmp_path):
    document = {"format": FORMAT, "version": VERSION, "items": [1, 2]}
    assert read_document(_write(tmp_path / "d.json", document), FORMAT, VERSION) == document


@pytest.mark.parametrize("content, sentence", [
    (b'{"format": "\xff"}', "d.json: the file is not UTF-8 text."),
    ("{", "d.json: the file is not valid JSON (Expecting property name enclosed in double quotes: "
          "line 1 column 2 (char 1))."),
    ([1, 2], "d.json: the file is not a scpm-test-document document (it holds an array, not an object)."),
    ('"text"', "d.json: the file is not a scpm-test-document document (it holds a string, not an object)."),
    ("null", "d.json: the file is not a scpm-test-document document (it holds null, not an object)."),
    ({"version": 3}, "d.json: the file is not a scpm-test-document document (it has no format field, "
                     "not 'scpm-test-document')."),
    ({"format": "other", "version": 3}, "d.json: the file is not a scpm-test-document document (its format "
                                        "is 'other', not 'scpm-test-document')."),
    ({"format": FORMAT}, "d.json: the scpm-test-document file has no version field (this program reads "
                         "version 3)."),
    ({"format": FORMAT, "version": 4}, "d.json: scpm-test-document version 4 is not the version 3 this "
                                       "program reads."),
    ({"format": FORMAT, "version": "3"}, "d.json: scpm-test-document version '3' is not the version 3 this "
                                         "program reads."),
])
def test_each_problem_is_one_sentence_naming_the_file(tmp_path, content, sentence):
    path = _write(tmp_path / "d.json", content)
    with pytest.raises(DocumentError) as raised:
        read_document(path, FORMAT, VERSION)
    assert str(raised.value) == f"{tmp_path}/{sentence}"
    assert isinstance(raised.value, UserInputError)
    assert raised.value.where == str(path) and f"{raised.value.where}: {raised.value.reason}." == str(raised.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DocumentError, match=r"nothing.json: file not found\.$"):
        read_document(tmp_path / "nothing.json", FORMAT, VERSION)
    with pytest.raises(DocumentError, match="file not found"):
        read_json(tmp_path)  # a folder is not a file either


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    path = _write(tmp_path / "d.json", {"format": FORMAT, "version": VERSION})

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(DocumentError, match=r"d.json: the file could not be read \(Permission denied\)\.$"):
        read_document(path, FORMAT, VERSION)


def test_the_kind_of_document_can_be_named_in_words(tmp_path):
    path = _write(tmp_path / "r.json", {"format": "other", "version": 1})
    with pytest.raises(DocumentError, match="r.json: the file is not an SCPMNodule review file "):
        read_document(path, "scpm-nodule-review", 1, "an SCPMNodule review file")


def test_a_dict_from_elsewhere_is_checked_alike():
    checkpoint = {"format": FORMAT, "version": VERSION, "state_dict": {}}
    assert check_document(checkpoint, FORMAT, VERSION, "m.pt") is checkpoint
    with pytest.raises(DocumentError, match=r"^m.pt: the file is not a scpm-test-document document \(it holds "
                                            r"a number, not an object\)\.$"):
        check_document(3, FORMAT, VERSION, "m.pt")
    with pytest.raises(DocumentError, match=r"\(it holds a set, not an object\)"):
        check_document({FORMAT}, FORMAT, VERSION, "m.pt")
    with pytest.raises(DocumentError, match="version True is not"):
        check_document({"format": FORMAT, "version": True}, "scpm-test-document", 1, "m.pt")


def test_json_without_a_format_is_read_as_it_is(tmp_path):
    assert read_json(_write(tmp_path / "c.json", [1, {"a": None}])) == [1, {"a": None}]
