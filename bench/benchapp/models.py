"""Tables the benchmarks fill and clean: a plain one, and a parent with cascading children."""

from django.db import models


class PlainRow(models.Model):
    created_at = models.DateTimeField(db_index=True)
    payload = models.CharField(max_length=50)


class Parent(models.Model):
    created_at = models.DateTimeField(db_index=True)


class Child(models.Model):
    parent = models.ForeignKey(Parent, on_delete=models.CASCADE, related_name="children")
    payload = models.CharField(max_length=50)
