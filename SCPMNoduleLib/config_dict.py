"""Typed dict-to-dataclass loading: configs from JSON (files, checkpoints, caches) back to dataclasses.

:func:`dataclass_from_dict` builds a (nested) config dataclass from the plain dict that
:func:`dataclasses.asdict` and JSON give, checking the dict against the dataclass's type hints:

* an unknown key is refused (a typo must not silently fall back to a default);
* a nested dataclass field is built from its own dict, recursively;
* a ``tuple[T, ...]`` or ``tuple[A, B]`` field takes a list (JSON has no tuples), item by item,
  and ``tuple[A, B]`` only one of two items;
* a ``float`` field takes an integer (``1`` for ``1.0``); ``bool``, ``int``, ``float`` and ``str``
  fields take nothing else (``true`` is not an integer, ``"False"`` is not a boolean);
* a union field (``int | None``) takes its value as it is.

Every refusal is a :class:`~SCPMNoduleLib.errors.UserInputError` whose sentence starts with the
key's path (``config.optim.epochs: 5.5 is not an integer.``); a dataclass whose constructor
refuses the values with ``TypeError`` or ``ValueError`` is reported under its path the same way,
and one that raises ``UserInputError`` itself keeps its own sentence.

The rule for config dataclasses: each checks its own values when it is made (``__post_init__``)
and refuses a bad one with ``UserInputError``, never ``ValueError``, because configs are filled
from what users give (JSON files, command-line overrides, checkpoints, the Slicer panel) and
``UserInputError`` is what every entry point reports as one sentence. :func:`invalid_setting`
writes that sentence, ``MatchingConfig.top_k: 0 is not at least 1.``, and :func:`check_choice`
refuses a string option outside its choices with it, ``LossConfig.siou_mode: 'exact' is not one of
continuous, paper.``
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UserInputError

__all__ = ["check_choice", "dataclass_from_dict", "invalid_setting"]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

_SCALAR_NAMES = {bool: "boolean (true or false)", int: "integer", float: "number", str: "string"}


def dataclass_from_dict(cls: type[T], data: Any, where: str) -> T:
    """Instantiate dataclass ``cls`` from a JSON-like dict, recursively (see the module docstring).

    Args:
        cls: the dataclass.
        data: its fields by name, any subset (the others keep their defaults).
        where: how the user knows this dict (``"config"``, ``"m.pt: the checkpoint's model
            config"``); error sentences start with it, nested keys appended as ``where.key``.

    Raises:
        UserInputError: ``data`` is not a dict, has an unknown key, holds a value of the wrong
            type, or the dataclass refuses the values.
    """
    if not isinstance(data, dict):
        raise UserInputError(f"{where}: expected an object, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserInputError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}.")
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise UserInputError(f"{where}: {str(error).rstrip('.')}.") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the type ``hint`` asks (see the module docstring), or a refusal naming ``where``."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserInputError(f"{where}: {value!r} is not an array.")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, where) for item in value)
        if len(value) != len(args):
            raise UserInputError(f"{where}: {list(value)!r} has {len(value)} items, not {len(args)}.")
        return tuple(_convert(arg, item, where) for arg, item in zip(args, value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in _SCALAR_NAMES and type(value) is not hint:
        article = "an" if hint is int else "a"
        raise UserInputError(f"{where}: {value!r} is not {article} {_SCALAR_NAMES[hint]}.")
    return value


def invalid_setting(config: Any, name: str, expected: str) -> UserInputError:
    """The error for field ``name`` of dataclass ``config``: ``"<Class>.<name>: <value> <expected>."``.

    ``expected`` says what the value fails, e.g. ``"is not at least 1"``; the caller raises it.
    """
    return UserInputError(f"{type(config).__name__}.{name}: {getattr(config, name)!r} {expected}.")


def check_choice(config: Any, name: str, choices: Iterable[str]) -> None:
    """Refuse field ``name`` of dataclass ``config`` unless its value is one of ``choices``.

    Raises:
        UserInputError: :func:`invalid_setting`'s sentence, ``"<Class>.<name>: 'v' is not one of a, b, c."``.
    """
    choices = tuple(choices)
    if getattr(config, name) not in choices:
        raise invalid_setting(config, name, f"is not one of {', '.join(choices)}")
