"""Legal holds in the admin: add, change and delete permissions of their own."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from cleanups.models import CleanupHold


class CleanupHoldForm(forms.ModelForm):
    class Meta:
        model = CleanupHold
        fields = ["reason", "model_label", "filter", "directory", "ends_at"]

    editor: Any = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.editor is not None and not self.errors:
            for name in ("reason", "model_label", "filter", "directory", "ends_at"):
                setattr(self.instance, name, cleaned.get(name, getattr(self.instance, name)))
            why = self.instance.refusal_for(self.editor)
            if why:
                self.add_error("model_label", why)
        return cleaned


@admin.register(CleanupHold)
class CleanupHoldAdmin(admin.ModelAdmin):
    form = CleanupHoldForm
    list_display = ["reason", "target", "filter", "created_by", "created_at", "ends_at", "active"]
    search_fields = ["reason", "model_label", "directory"]
    readonly_fields = ["created_by", "created_at"]

    @admin.display(boolean=True, description="In force")
    def active(self, hold: CleanupHold) -> bool:
        return CleanupHold.objects.active().filter(pk=hold.pk).exists()

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, **kwargs)
        form.editor = request.user
        return form

    def save_model(self, request: HttpRequest, obj: CleanupHold, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)
