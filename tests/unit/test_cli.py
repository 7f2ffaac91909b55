"""The command line: fast start, every command answers --help, bad input is one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.cli.command import build_parser

ROOT = Path(__file__).resolve().parents[2]


def carrara(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)  # type: ignore[arg-type]


def test_parser_imports_no_heavy_library() -> None:
    code = (
        "import sys, serving.cli.command as c; c.build_parser(); "
        "heavy = {'feast', 'pandas', 'pyarrow', 'lightgbm', 'grpc', 'redis'} & set(sys.modules); "
        "sys.exit(', '.join(sorted(heavy)) or None)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, f"imported at start-up: {result.stderr}"


@pytest.mark.parametrize("command", subcommands())
def test_every_command_answers_help(command: str) -> None:
    result = carrara(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: carrara" in result.stdout


def test_nonsense_size_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = carrara("sample-data", "--out", str(tmp_path), "--zones", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == "carrara sample-data: --zones must be in [4, 10000], got 1"


def test_negative_size_is_refused_by_the_parser(tmp_path: Path) -> None:
    result = carrara("sample-data", "--out", str(tmp_path), "--drivers", "-5")
    assert result.returncode == 2
    assert "must not be negative" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_output_folder_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = carrara("sample-data", "--out", str(blocker / "data"))
    assert result.returncode == 2
    assert str(blocker / "data") in result.stderr
    assert "Traceback" not in result.stderr


def test_apply_on_a_missing_repo_names_it(tmp_path: Path) -> None:
    result = carrara("apply", "--repo", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "nowhere/feature_store.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_sample_data_writes_every_table(tmp_path: Path) -> None:
    result = carrara(
        "sample-data", "--out", str(tmp_path), "--drivers", "50", "--zones", "9", "--hours", "3"
    )
    assert result.returncode == 0, result.stderr
    assert "rows/s" in result.stdout
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == [
        "driver_stats.parquet",
        "route_stats.parquet",
        "surge_observations.parquet",
        "trips.parquet",
        "zone_events.parquet",
        "zone_stats.parquet",
    ]


def test_every_command_the_readme_names_exists() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"(?:^|`|\s)carrara ([a-z][a-z-]*)", readme, flags=re.MULTILINE))
    assert {"demo", "serve", "materialize", "train", "score"} <= named  # the pattern finds them
    assert named <= set(subcommands()), (
        f"README names unknown commands: {named - set(subcommands())}"
    )
