"""The review's undo history: the nodules as they were before each edit, last edit last.

An edit is recorded before it changes anything (:meth:`EditHistory.record`). Edits with the same
key in a row (the steps of a diameter spin box, the keystrokes of a note on one nodule) count as
one; the edits made inside :meth:`EditHistory.one_edit` count as one; at most ``depth`` edits are
kept, the oldest dropped first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator

from .nodules import Nodule

__all__ = ["UNDO_DEPTH", "EditHistory"]

UNDO_DEPTH = 100  # edits that undo() can take back


class EditHistory:
    """The states to go back to, each a list of nodules, most recent last."""

    def __init__(self, depth: int = UNDO_DEPTH):
        self.depth = depth
        self._states: list[tuple[Hashable, list[Nodule]]] = []
        self._grouped = False

    def __bool__(self) -> bool:
        return bool(self._states)

    def record(self, snapshot: Callable[[], list[Nodule]], key: Hashable | None = None) -> None:
        """Push ``snapshot()``, the state before an edit, unless the edit joins the last one (same
        ``key``, or inside :meth:`one_edit`)."""
        if self._grouped:
            return
        if key is not None and self._states and self._states[-1][0] == key:
            return
        self.push(snapshot(), key)

    def push(self, state: list[Nodule], key: Hashable | None = None) -> None:
        """Push a state; :meth:`record` calls it, and the review pushes one it took earlier (the
        review before a drag began)."""
        self._states.append((key, state))
        del self._states[:-self.depth]

    @contextlib.contextmanager
    def one_edit(self, snapshot: Callable[[], list[Nodule]]) -> Iterator[None]:
        """A context whose changes undo as one edit."""
        self.record(snapshot)
        self._grouped = True
        try:
            yield
        finally:
            self._grouped = False

    def pop(self) -> list[Nodule] | None:
        """The state before the last edit, taken off the history; None when there is none."""
        return self._states.pop()[1] if self._states else None
