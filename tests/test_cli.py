"""The `fastbind` command line: its subcommands and the values its options take."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

import pytest

import fastbind
from fastbind import cli


def test_bench_hands_every_argument_to_the_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastbind import benchmark

    seen: list[list[str]] = []

    def fake_main(argv: Sequence[str] | None = None) -> int:
        seen.append(list(argv or []))
        return 3

    monkeypatch.setattr(benchmark, "main", fake_main)
    assert cli.main(["bench", "--quick", "--json", "out.json"]) == 3
    assert seen == [["--quick", "--json", "out.json"]]


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert "serve" in out and "check" in out and "bench" in out


def test_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "fastbind", "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == f"fastbind {fastbind.__version__}"


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1048576), ("512K", 512 * 1024), ("10M", 10 * 1024**2), ("1g", 1024**3), ("100MB", 100 * 1024**2),
     ("64KiB", 64 * 1024)],
)
def test_sizes(text: str, size: int) -> None:
    assert cli._size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "-1", "0", "1.5M", "3T"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli._size(text)


def test_bad_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["serve", "--port", "70000"], ["serve", "--workers", "0"], ["serve", "--read-timeout", "0"],
                 ["serve", "--max-body", "lots"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "argument --max-body: not a size in bytes" in capsys.readouterr().err
