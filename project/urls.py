from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from llmjobs.api import api
from llmjobs.health import healthz_details

urlpatterns = [
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True, next_page="llmjobs:job_list"),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("healthz/details", healthz_details, name="healthz_details"),  # staff only
    path("api/v1/", api.urls),
    path("", include("llmjobs.web.urls")),
]
