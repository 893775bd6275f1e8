"""What a published package promises: one version, the suites mapped into the wheel, a README
that works on PyPI (absolute links, every option listed), a changelog entry, `gpuinfer`."""

from __future__ import annotations

import re
import runpy
import tomllib
from pathlib import Path

import pytest

import pytest_gpuinfer
from pytest_gpuinfer import cli
from pytest_gpuinfer.plugin.options import OPTIONS
from pytest_gpuinfer.suites import SUITES

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_declared_once() -> None:
    """pyproject.toml reads the version from the package; nothing else states it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pytest_gpuinfer.__version__)


def test_changelog_has_the_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {pytest_gpuinfer.__version__}" in changelog


def test_every_suite_folder_is_mapped_into_the_package() -> None:
    """setup.py maps tests/<suite> for each suite the package names, and each is a package."""
    mapped = runpy.run_path(str(ROOT / "pytest_gpuinfer" / "suites" / "__init__.py"))["SUITES"]
    assert tuple(mapped) == SUITES
    for name in SUITES:
        assert (ROOT / "tests" / name / "__init__.py").is_file(), f"tests/{name} is no package"
    assert not (ROOT / "tests" / "plugin" / "__init__.py").exists(), "tests/plugin must not ship"


def test_readme_links_work_off_github() -> None:
    """PyPI shows the README without the repository: every link is absolute or an anchor."""
    readme = (ROOT / "README.md").read_text()
    relative = [
        target
        for target in re.findall(r"\]\(([^)]+)\)", readme)
        if not target.startswith(("https://", "http://", "#"))
    ]
    assert relative == []


def test_readme_lists_every_option_with_its_ini_key() -> None:
    readme = (ROOT / "README.md").read_text()
    for spec in OPTIONS:
        flag = spec.short_flag or spec.long_flag
        assert f"`{flag}" in readme, f"{flag} is not in README's option table"
        if not spec.switch:
            assert f"`{spec.ini}`" in readme, f"{spec.ini} is not in README's option table"


@pytest.mark.parametrize("suite", [*SUITES, "all"])
def test_gpuinfer_command_runs_the_packaged_suite(suite: str) -> None:
    args = cli.pytest_args(suite, ["--endpoint", "http://h:1"])
    assert args[0] == "--pyargs"
    names = SUITES if suite == "all" else (suite,)
    assert args[1 : 1 + len(names)] == [f"pytest_gpuinfer.suites.{n}" for n in names]
    assert args[-2:] == ["--endpoint", "http://h:1"]


def test_gpuinfer_list_names_every_suite(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(SUITES)
