from django.urls import path, re_path

from . import results_views, views

app_name = "llmjobs"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/new/", views.job_new, name="job_new"),
    path("jobs/<int:pk>/", views.job_detail, name="job_detail"),
    path("jobs/<int:pk>/events", views.job_events, name="job_events"),
    path("jobs/<int:pk>/throughput.svg", views.job_throughput_svg, name="job_throughput"),
    re_path(r"^jobs/(?P<pk>[0-9]+)/export\.(?P<fmt>csv|jsonl)$", views.job_export_view, name="job_export"),
    path("jobs/<int:pk>/run", views.job_run, name="job_run"),
    path("jobs/<int:pk>/preview", views.job_preview, name="job_preview"),
    path("jobs/<int:pk>/cancel", views.job_cancel_view, name="job_cancel"),
    path("jobs/<int:pk>/retry", views.job_retry_view, name="job_retry"),
    path("jobs/new/inspect", results_views.upload_inspect, name="upload_inspect"),
    path("jobs/<int:pk>/results.json", results_views.job_results, name="job_results"),
    path("jobs/<int:pk>/items/<int:position>/", results_views.item_detail, name="item_detail"),
    path("jobs/<int:pk>/clone/", results_views.job_clone_view, name="job_clone"),
    path("jobs/<int:pk>/resume", results_views.job_resume_view, name="job_resume"),
    path("playground/", views.playground, name="playground"),
    path("playground/stream", views.playground_stream, name="playground_stream"),
]
