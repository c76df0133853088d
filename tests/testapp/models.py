"""Models the tests clean up: a plain table, a cascading pair, and one with delete signals."""

from django.db import models
from django.db.models.signals import post_delete
from django.dispatch import receiver


class Event(models.Model):
    created_at = models.DateTimeField(db_index=True)
    day = models.DateField(null=True)
    kind = models.CharField(max_length=20, default="info")
    name = models.CharField(max_length=50, default="")


class Parent(models.Model):
    created_at = models.DateTimeField(db_index=True)


class Child(models.Model):
    parent = models.ForeignKey(Parent, on_delete=models.CASCADE, related_name="children")


class Audited(models.Model):
    """Deleting one must fire its signal (so the fast path is not allowed)."""

    created_at = models.DateTimeField()


class DeletionLog(models.Model):
    audited_id = models.BigIntegerField()


@receiver(post_delete, sender=Audited)
def log_deletion(sender: type[Audited], instance: Audited, **kwargs: object) -> None:
    DeletionLog.objects.create(audited_id=instance.pk)
