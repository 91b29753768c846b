"""Versioned documents: JSON files (and checkpoint dicts) that say what they are.

Every file this project writes for itself to read back (detection reports, the review's recovery
file, the training cache's descriptions) and every checkpoint is an object with two fields that
say what it is::

    {"format": "scpm-nodule-detections", "version": 1, ...}

A reader names the format and the one version it understands; anything else is refused with
one sentence that names the file and what is wrong, as :class:`DocumentError`, a
:class:`~SCPMNoduleLib.errors.UserInputError`:

* the file does not exist or cannot be read;
* it is not UTF-8 text, or not JSON;
* it holds something other than an object (an array, a string, ...);
* its ``format`` is another one (or missing);
* its ``version`` is not the one this program reads.

:func:`read_document` reads and checks a file; :func:`check_document` checks an object that
came from elsewhere (a ``torch.load`` of a checkpoint); :func:`read_json` reads a JSON file that
has no format (a user's config). Torch-free.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserInputError

__all__ = ["DocumentError", "check_document", "read_document", "read_json"]


class DocumentError(UserInputError):
    """A file or checkpoint that is not the document its reader expects.

    ``str(error)`` is the whole sentence ``"<where>: <reason>."``; ``reason`` is the part after
    the colon, without the full stop, for callers that put it into a sentence of their own.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}.")
        self.where = where
        self.reason = reason


def read_json(path: str | os.PathLike) -> Any:
    """The parsed content of a UTF-8 JSON file.

    Raises:
        DocumentError: the file is missing, unreadable, not UTF-8 or not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DocumentError(str(path), "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DocumentError(str(path), "the file is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise DocumentError(str(path), f"the file is not valid JSON ({error})") from None
    except OSError as error:
        raise DocumentError(str(path), f"the file could not be read ({error.strerror or error})") from None


def _kind(value: Any) -> str:
    """``value``'s type in JSON's words, with an article."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    return f"a {type(value).__name__}"


def check_document(document: Any, format: str, version: int, where: str,
                   what: str | None = None) -> dict[str, Any]:
    """``document`` itself when it is an object whose ``format`` and ``version`` are these.

    Args:
        document: what was read (parsed JSON, or a dict loaded from a checkpoint).
        format: the expected ``"format"`` field.
        version: the one ``"version"`` this program reads.
        where: the file's path (or another name the user knows), first word of the sentence.
        what: the document's kind in words, with its article (``"an SCPMNodule review file"``);
            by default ``"a <format> document"``.

    Raises:
        DocumentError: one sentence naming ``where`` and what is wrong.
    """
    what = what or f"a {format} document"
    if not isinstance(document, dict):
        raise DocumentError(where, f"the file is not {what} (it holds {_kind(document)}, not an object)")
    found = document.get("format")
    if found != format:
        told = "it has no format field" if found is None else f"its format is {found!r}"
        raise DocumentError(where, f"the file is not {what} ({told}, not {format!r})")
    found = document.get("version")
    if found is None:
        raise DocumentError(where, f"the {format} file has no version field (this program reads version {version})")
    if found != version or isinstance(found, bool):
        raise DocumentError(where, f"{format} version {found!r} is not the version {version} this program reads")
    return document


def read_document(path: str | os.PathLike, format: str, version: int,
                  what: str | None = None) -> dict[str, Any]:
    """Read a JSON document and check its ``format`` and ``version`` (:func:`check_document`).

    Raises:
        DocumentError: the file is missing, not UTF-8, not JSON, not an object, of another
            format or of another version; one sentence that names the file.
    """
    return check_document(read_json(path), format, version, str(path), what)
