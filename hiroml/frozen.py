"""Making many frozen, slotted dataclass records fast (the records a build reads back from
its caches: the index's :class:`~hiroml.records.Instance`\\ s, the task records'
:class:`~hiroml.records.SampleRecord`\\ s).

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (about 0.4
us a field: 20 us for an ``Instance`` of 48 fields), and a build makes one per zip and per
sample each time it runs, the cached ones included. :func:`maker` returns a function that
makes the same object from all its field values in order: an object of a plain class with
the same slots, filled by ordinary attribute stores, whose class is then set to the record's
class (CPython allows it between classes of the same slots and layout; the check is made
once, when the maker is made). The object is the record, equal to ``cls(*values)`` field by
field: no ``__post_init__`` runs, so a class with one is refused.

:func:`share_texts` makes the texts many records hold (a batch, a series, a task's shard,
an image type) one object each, before the records are made from their rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[..., T]:
    """``make(*values)``: ``cls(*values)`` with every field given, in field order, made
    without the frozen ``__init__``. ``cls``: a frozen dataclass with ``slots=True``, directly
    derived from ``object``, without ``__post_init__``."""
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    if (
        cls.__bases__ != (object,)
        or getattr(cls, "__slots__", None) != names
        or hasattr(cls, "__post_init__")
        or not all(n.isidentifier() and not n.startswith("_") for n in names)
    ):
        raise TypeError(f"{cls.__name__}: not a plain frozen dataclass with slots")
    shadow: Any = type(f"_{cls.__name__}Values", (object,), {"__slots__": names})
    args = ", ".join(names)
    body = "; ".join(f"self.{n} = {n}" for n in names)
    space: dict[str, Any] = {}
    exec(f"def __init__(self, {args}):\n    {body}\n", space)  # field names only (checked above)
    shadow.__init__ = space["__init__"]

    def make(*values: Any) -> T:
        obj = shadow(*values)
        obj.__class__ = cls
        return obj

    probe = make(*range(len(names)))  # raises TypeError now if the layouts differ
    if type(probe) is not cls or [getattr(probe, n) for n in names] != list(range(len(names))):
        raise TypeError(f"{cls.__name__}: its slots are not filled in field order")
    return make


def share_texts(row: list[Any], at: Sequence[int], shared: dict[Any, Any]) -> None:
    """Replace each text or tuple of texts of ``row`` at the positions ``at`` with the equal
    value ``shared`` holds, or add it there (``shared`` maps each value to itself): rows read
    back with one ``shared`` hold one object per distinct value. Other values (a damaged
    row's list or numbers) stay as they are."""
    share = shared.setdefault
    for k in at:
        v = row[k]
        if not v:  # None, or an empty text or tuple: one object already
            continue
        kind = v.__class__
        if kind is str or (kind is tuple and all(x.__class__ is str for x in v)):
            row[k] = share(v, v)
