from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("cleanups.urls")),
]

# A database error raised outside a view (the middleware covers the views) is a 503 too.
handler500 = "cleanups.views.unavailable.server_error"
