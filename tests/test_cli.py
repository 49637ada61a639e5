"""The `fastbind` command line: its subcommands and the values its options take."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
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


def _version(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FASTBIND_")}
    proc = subprocess.run([sys.executable, "-m", "fastbind", "--version"], capture_output=True,
                          text=True, timeout=30, env={**clean, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_version_names_the_core_the_fast_paths_and_the_interpreter() -> None:
    lines = _version()
    interpreter = f"interpreter: {platform.python_implementation()} {platform.python_version()}"
    assert lines[0] == f"fastbind {fastbind.__version__}" and lines[2].startswith(interpreter)
    if importlib.util.find_spec("fastbind.core._core") is not None:  # installed compiled
        built = sys.implementation.name == "cpython" and (3, 11) <= sys.version_info < (3, 14)
        fast = "on" if built else "not built for this interpreter"
        assert lines[1].startswith(f"core: compiled (fast paths {fast}")
        assert _version(FASTBIND_FAST_PATHS="0")[1] == (
            "core: compiled (fast paths off: FASTBIND_FAST_PATHS=0; ledger clock monotonic)"
            if built else
            "core: compiled (fast paths not built for this interpreter; ledger clock monotonic)"
        )
    else:
        assert lines[1] == "core: pure (installed without the compiled core)"
    assert _version(FASTBIND_NO_EXTENSIONS="1")[1] == "core: pure (FASTBIND_NO_EXTENSIONS is set)"


def test_a_wrong_fast_paths_switch_is_refused_with_its_values() -> None:
    if fastbind.core.compiled is None:
        pytest.skip("the switch belongs to the compiled core")
    proc = subprocess.run([sys.executable, "-m", "fastbind", "--version"], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "FASTBIND_FAST_PATHS": "yes"})
    assert proc.returncode != 0
    assert "FASTBIND_FAST_PATHS must be 0 (public C API only) or 1 (the default), not 'yes'" in proc.stderr


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
                 ["serve", "--max-body", "lots"], ["serve", "--ws-ping-interval", "-1"],
                 ["serve", "--ws-ping-timeout", "0"], ["serve", "--ws-max-message", "0"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "argument --max-body: not a size in bytes" in capsys.readouterr().err


def test_websocket_options() -> None:
    parsed = cli._parser().parse_args(["serve", "--ws-ping-interval", "0", "--ws-send-queue", "1M"])
    assert parsed.ws_ping_interval is None  # 0: no pings
    assert parsed.ws_send_queue == 1024**2
    defaults = cli._parser().parse_args(["serve"])
    assert (defaults.ws_max_message, defaults.ws_ping_interval, defaults.ws_ping_timeout) == (1024**2, 20.0, 20.0)
