"""The documentation stays true to the code: the configuration page is written from the settings,
every command is documented, and every link between the pages leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from monitor import settings
from monitor.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_configuration_page_is_what_the_settings_write():
    assert (DOCS / "configuration.md").read_text() == settings.markdown(), (
        "docs/configuration.md differs from monitor/settings.py: run "
        "`.venv/bin/python -m monitor.settings > docs/configuration.md`")


def test_every_setting_is_on_the_configuration_page():
    text = (DOCS / "configuration.md").read_text()
    assert all(f"`{settings.variable(name)}`" in text for name in settings.Settings.model_fields)


def commands() -> list[str]:
    click_app = typer.main.get_command(app)
    out = []
    for name, cmd in click_app.commands.items():
        subs = getattr(cmd, "commands", None)
        out += [f"monitor {name} {sub}" for sub in subs] if subs else [f"monitor {name}"]
    return out


def test_every_command_is_documented():
    text = "".join((DOCS / page).read_text() for page in ("cli.md", "models.md", "api.md", "operations.md"))
    missing = [c for c in commands() if c not in text]
    assert not missing, f"not in docs/: {missing}"


def test_links_between_pages_lead_somewhere():
    for page in [ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to {target}, which does not exist"
