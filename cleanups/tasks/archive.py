"""Archive before delete: each batch's rows, serialized by Django's serializers as JSON Lines,
gzip, written to a Django storage and closed before that batch's DELETE commits.

A part is named ``<schedule>/<run>/<nnnnn>-<model>.jsonl.gz`` in the storage that
CLEANUP_ARCHIVE_STORAGE names (a key of settings.STORAGES; blank: a file system storage under
MEDIA_ROOT/cleanups-archive). Its lines are the parents first, then the rows that cascade from
them, so a restore reading it in order never loads a child before its parent.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.core import serializers
from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.core.files.storage.handler import InvalidStorageError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from cleanups.conf import settings


class FullPrecisionEncoder(DjangoJSONEncoder):
    """Django's encoder cuts datetimes and times to milliseconds; a restore must give back
    exactly what went, so these keep their microseconds."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime.datetime | datetime.time):
            text = o.isoformat()
            return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
        return super().default(o)


# Fast over small: an archive is written once and rarely read, while a batch's lock waits.
GZIP_LEVEL = 1
HASH_CHUNK = 1 << 20


def archive_storage() -> Storage:
    """The storage archives go to. Raises InvalidStorageError for an unknown key."""
    key = settings.CLEANUP_ARCHIVE_STORAGE
    if key:
        return storages[key]
    return FileSystemStorage(location=Path(settings.MEDIA_ROOT or ".") / "cleanups-archive")


def storage_problem() -> str | None:
    """Why CLEANUP_ARCHIVE_STORAGE cannot be used, or None."""
    try:
        archive_storage()
    except InvalidStorageError:
        return (
            f"CLEANUP_ARCHIVE_STORAGE is {settings.CLEANUP_ARCHIVE_STORAGE!r}, which is not a "
            f"key of STORAGES ({', '.join(sorted(settings.STORAGES))})."
        )
    return None


def sha256_of(storage: Storage, name: str) -> str:
    digest = hashlib.sha256()
    with storage.open(name, "rb") as part:
        while chunk := part.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Fields whose values, as a query reads them, are what Django's serializer writes (or become it
# by a known conversion): a model of only these is written from rows, not model instances.
_AS_READ = (
    models.AutoField,
    models.BigAutoField,
    models.SmallAutoField,
    models.IntegerField,
    models.FloatField,
    models.DecimalField,
    models.BooleanField,
    models.CharField,
    models.TextField,
    models.DateField,  # DateTimeField too
    models.TimeField,
    models.JSONField,
)


def plain_fields(model: type[models.Model]) -> list[tuple[str, str, Any]] | None:
    """(name, attname, conversion) of each field Django's serializer writes, if every one can
    be written from a row as read; None when the model needs the serializer itself."""
    opts = model._meta.concrete_model._meta
    if opts.parents or any(f.serialize for f in opts.local_many_to_many) or opts.pk is None:
        return None
    found = []
    for field in opts.local_fields:
        if not field.serialize:
            continue
        if isinstance(field, models.ForeignKey):
            uuid_key = isinstance(field.target_field, models.UUIDField)
            found.append((field.name, field.attname, str if uuid_key else None))
        elif isinstance(field, models.UUIDField):
            found.append((field.name, field.attname, str))
        elif isinstance(field, _AS_READ):
            found.append((field.name, field.attname, None))
        else:
            return None
    return found


_encode = FullPrecisionEncoder(ensure_ascii=False).encode  # stateless: shared by threads


def lines_of(model: type[models.Model], fields: list[tuple[str, str, Any]], rows: Any) -> str:
    """The lines Django's jsonl serializer writes for ``rows``: tuples (pk, *attnames of
    ``fields``) of ``model``, as a query reads them."""
    opts = model._meta.concrete_model._meta
    label = f"{opts.app_label}.{opts.model_name}"
    names = [name for name, _, _ in fields]
    converts = [(index, convert) for index, (_, _, convert) in enumerate(fields) if convert]
    lines = []
    for row in rows:
        values = list(row[1:])
        for index, convert in converts:
            if values[index] is not None:
                values[index] = convert(values[index])
        pk = str(row[0]) if isinstance(row[0], uuid.UUID) else row[0]
        lines.append(
            _encode({"model": label, "pk": pk, "fields": dict(zip(names, values, strict=True))})
        )
        lines.append("\n")
    return "".join(lines)


def columns(fields: list[tuple[str, str, Any]]) -> list[str]:
    """What a query reads for ``lines_of``: the primary key, then each field's column."""
    return ["pk", *(attname for _, attname, _ in fields)]


class Archiver:
    """Writes one run's archive parts; each part it writes is recorded on the run by the
    deleter in the transaction of the batch it holds."""

    def __init__(self, prefix: str, storage: Storage | None = None) -> None:
        self.storage = storage or archive_storage()
        self.prefix = prefix.strip("/")
        self.written = 0

    def _name(self, what: str) -> str:
        self.written += 1
        return f"{self.prefix}/{os.getpid()}-{self.written:05d}-{what}"

    def write_rows(self, groups: Iterable[Iterable[models.Model]], label: str) -> dict[str, Any]:
        """Write a part of ``groups`` of model instances (parents first) through Django's
        serializer: see ``write_lines``."""
        texts, rows = [], 0
        for objects in groups:
            instances = list(objects)
            rows += len(instances)
            texts.append(serializers.serialize("jsonl", instances, cls=FullPrecisionEncoder))
        return self.write_lines(texts, rows, label)

    def write_lines(self, texts: Iterable[str], rows: int, label: str) -> dict[str, Any]:
        """Write a part of serialized lines (parents first), closed before this returns: its
        name, rows, bytes and SHA-256. Raises OSError (or the storage's error) if it cannot."""
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as out:
            for text in texts:
                out.write(text.encode())
        data = buffer.getvalue()
        name = self.storage.save(self._name(f"{label.lower()}.jsonl.gz"), ContentFile(data))
        return {
            "name": name,
            "model": label,
            "rows": rows,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    def move_file(self, name: str, dir_fd: int, original: str) -> dict[str, Any]:
        """Copy a file (opened relative to ``dir_fd``, never through a symlink) into the archive
        and close it there; the caller unlinks it. Its entry, with the path it came from."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            stored = self.storage.save(self._name(f"file-{Path(name).name}"), File(source))
        return {
            "name": stored,
            "file": original,
            "rows": 1,
            "bytes": size,
            "sha256": sha256_of(self.storage, stored),
        }
