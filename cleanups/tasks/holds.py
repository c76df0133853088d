"""Legal holds as the deleters see them: which rows of a model and which directories are held.

The holds themselves are rows of the app (``CleanupHold``), which this API never imports: the app
installs its source when it is ready (``install``), so that every deleting path, a task's own
context included, sees them without being handed anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from django.db import models
from django.db.models import Q
from django.db.models.deletion import CASCADE, get_candidate_relations_to_delete


class HoldSource(Protocol):
    def row_holds(self, model: type[models.Model]) -> list[tuple[str, Q]]:
        """(reason, the rows it holds) of every hold in force on ``model``."""
        ...

    def directory_holds(self) -> list[tuple[str, Path]]:
        """(reason, the directory it holds) of every directory hold in force."""
        ...


class NoHolds:
    def row_holds(self, model: type[models.Model]) -> list[tuple[str, Q]]:
        return []

    def directory_holds(self) -> list[tuple[str, Path]]:
        return []


_source: list[HoldSource] = [NoHolds()]


def install(source: HoldSource) -> None:
    _source[0] = source


def source() -> HoldSource:
    return _source[0]


MAX_DEPTH = 4  # cascades followed from a target to the holds on its dependents


def held_keys(
    model: type[models.Model], db: str, depth: int = 0, seen: frozenset[str] = frozenset()
) -> list[tuple[str, models.QuerySet[Any]]]:
    """(reason, a query of ``model``'s primary keys it keeps) for each hold that keeps rows of
    ``model``: held rows of its own, and rows whose deletion would cascade to held rows of a
    dependent model (followed through CASCADE relations)."""
    found = [
        (reason, model._base_manager.using(db).filter(rows).values("pk"))
        for reason, rows in source().row_holds(model)
    ]
    label = model._meta.label
    if depth >= MAX_DEPTH or label in seen:
        return found
    for related in get_candidate_relations_to_delete(model._meta):
        if related.field.remote_field.on_delete is not CASCADE:
            continue
        child = related.related_model
        for reason, child_keys in held_keys(child, db, depth + 1, seen | {label}):
            parents = child._base_manager.using(db).filter(pk__in=child_keys)
            found.append((reason, parents.values(related.field.attname)))
    return found


def without_held(queryset: models.QuerySet[Any], holds: list[tuple[str, Any]]) -> Any:
    """``queryset`` without the rows ``holds`` (held_keys) keep."""
    for _, keys in holds:
        queryset = queryset.exclude(pk__in=keys)
    return queryset


def within(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both resolved paths)."""
    path, root = Path(path), Path(root)
    return path == root or root in path.parents


def held_reason(path: str | Path, held: list[tuple[str, Path]]) -> str | None:
    """The reason of the first of the directory holds ``held`` covering ``path``, or None."""
    return next((reason for reason, root in held if within(path, root)), None)
