"""The layout's promises (docs/architecture.md): one settings object, no import
circle, the surfaces on the same services, no oversized module."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings

from llmjobs import admin as admin_module
from llmjobs import jobs
from llmjobs.conf import LLMJobsSettings, llmjobs_settings
from llmjobs.web import views

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmjobs"


def _modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts]


def test_settings_are_read_once_and_follow_override_settings():
    assert llmjobs_settings() is llmjobs_settings()  # cached
    before = llmjobs_settings().max_items
    with override_settings(LLMJOBS_MAX_ITEMS=3, LLMJOBS_MODELS=["a", "b"]):
        assert llmjobs_settings().max_items == 3
        assert llmjobs_settings().models == ("a", "b")
    assert llmjobs_settings().max_items == before


def test_every_setting_has_a_meaning_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for field in dataclasses.fields(LLMJobsSettings):
        meaning = field.metadata.get("meaning")
        assert meaning, field.name
        default = ",".join(field.default) if isinstance(field.default, tuple) else field.default
        row = re.search(rf"^\| `LLMJOBS_{field.name.upper()}` \| [^|]+ \| `([^`]*)` \| (.*) \|$", readme, re.M)
        assert row is not None, f"LLMJOBS_{field.name.upper()} is not in the README's configuration table"
        assert row.groups() == (str(default), meaning), field.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        llmjobs_settings().max_items = 1  # type: ignore[misc]


def test_only_conf_reads_llmjobs_settings():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _modules()
        if path.name != "conf.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "getattr(settings" in line or re.search(r"settings\.LLMJOBS_", line)
    ]
    assert offenders == []


def test_prompts_imports_no_model():
    tree = ast.parse((PACKAGE / "prompts.py").read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert not {m for m in imported if "models" in m or m.startswith("django")}
    # and importing it loads no Django model module
    code = "import sys, llmjobs.prompts; assert 'llmjobs.models' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_admin_and_views_use_the_same_services():
    for name in ("job_cancel", "job_enqueue", "job_retry", "job_preview", "job_export_response", "preview_lines"):
        assert getattr(admin_module, name) is getattr(jobs, name), name
    assert views.jobs is jobs
    admin_src = (PACKAGE / "admin.py").read_text()
    views_src = (PACKAGE / "web" / "views.py").read_text()
    for service in ("job_cancel", "job_enqueue", "job_retry", "job_preview", "job_export_response"):
        assert service in admin_src and f"jobs.{service}" in views_src, service
    assert "PREVIEW_COUNT =" not in admin_src + views_src


def test_no_module_over_600_lines_and_no_simulator_module_over_400():
    sizes = {p: len(p.read_text().splitlines()) for p in _modules()}
    too_long = {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > (400 if "simulator" in p.parts else 600)}
    assert too_long == {}
