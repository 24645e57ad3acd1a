"""The documentation site builds with ``mkdocs build --strict`` (no network needed)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed: pip install '.[test]' installs it",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            "mkdocs.yml",
            "-d",
            out,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "mkdocs warnings:\n" + "\n".join(warnings)
    return out


def _text(html_file: Path) -> str:
    """Visible text of a built page, whitespace collapsed."""
    import html

    raw = html_file.read_text(encoding="utf-8")
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", raw, flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", raw)))


def test_site_builds_with_every_page(site):
    for page in (
        "index.html",
        "getting-started/index.html",
        "concepts/index.html",
        "conventions/index.html",
        "configuration/index.html",
        "examples/index.html",
        "api/index.html",
        "benchmarks/index.html",
        "troubleshooting/index.html",
        "architecture/index.html",
    ):
        assert (site / page).is_file(), page
    assert (site / "img" / "conventions.png").is_file()
    assert not (site / "scripts").exists(), "docs/scripts must not be published"


def test_getting_started_has_the_readme_commands_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md has no bash block"
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert f"```bash\n{block.group(1)}```" in page


def test_status_comes_from_the_readme(site):
    text = _text(site / "index.html")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)`", readme, re.MULTILINE)
    assert rows, "README status table not found"
    for name in rows:
        assert name in text, name


def test_configuration_page_matches_default_config(site):
    sys.path.insert(0, str(ROOT / "docs" / "scripts"))
    try:
        import mkdocs_hooks
    finally:
        sys.path.pop(0)
    from py4dstem_ccstae.estimator import DEFAULT_CONFIG

    assert mkdocs_hooks.default_config() == DEFAULT_CONFIG
    text = _text(site / "configuration" / "index.html")
    for key, value in DEFAULT_CONFIG.items():
        assert f"{key} {value!r}" in text, key


def test_api_reference_documents_the_public_api(site):
    text = _text(site / "api" / "index.html")
    for name in (
        "py4dstem_ccstae.CCSTAE",
        "py4dstem_ccstae.fit_strain",
        "py4dstem_ccstae.DiffractionInputs",
        "py4dstem_ccstae.LatticeTransform",
        "py4dstem_ccstae.simulate.polycrystal",
        "py4dstem_ccstae.noise.add_background_noise",
        "py4dstem_ccstae.noise.add_poisson_noise",
        "py4dstem_ccstae.baseline.py4dstem_strain",
        "py4dstem_ccstae.metrics.strain_errors",
    ):
        assert name in text, name
    # docstrings were parsed (numpy sections rendered), not just headings
    assert "Parameters:" in text and "Returns:" in text


def test_benchmarks_page_is_generated_from_the_results():
    """docs/benchmarks.md == what benchmarks/make_docs.py builds (no hand-typed numbers)."""
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "make_docs", root / "benchmarks" / "make_docs.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (root / "docs" / "benchmarks.md").read_text() == mod.render(), (
        "run: python benchmarks/make_docs.py"
    )
