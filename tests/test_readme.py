"""The README documents every setting with its default: generated, and checked here."""

from pathlib import Path

from sqlcheck.settings import settings_reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_matches_the_code():
    text = README.read_text()
    section = text.split("<!-- SECTION:settings -->", 1)[1].split("<!-- /SECTION:settings -->", 1)[0]
    assert settings_reference_markdown() in section, (
        "README settings table is stale: regenerate it with "
        "`python -c 'from sqlcheck.settings import settings_reference_markdown as m; print(m())'`"
    )
