"""The command line takes its global options before the command or after it (before: only
before, so ``toolkit status --data-dir d`` was a usage error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.cli.parser import parser


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "d", "-v", "status"],
        ["status", "--data-dir", "d", "-v"],
        ["-v", "status", "--data-dir", "d"],
    ],
)
def test_global_options_go_before_or_after_the_command(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert args.command == "status" and args.data_dir == Path("d") and args.verbose


def test_after_the_command_wins_and_what_is_not_repeated_stays() -> None:
    args = parser().parse_args(
        ["--data-dir", "a", "--system", "s:system", "relay", "sales", "--data-dir", "b"]
    )
    assert (args.data_dir, args.system, args.context) == (Path("b"), "s:system", "sales")
    assert not args.verbose and args.nats_url is None and args.app_dir is None


def test_a_command_option_is_still_refused_before_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit:
        parser().parse_args(["--once", "relay", "sales"])
    assert exit.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "refusal"),
    [
        (["commands", "sales", "--workers", "99999999999999999999"], "is more than 256"),
        (["work", "notifications", "--workers", "257"], "is more than 256"),
        (["demo", "--orders", "1000001"], "is more than 1,000,000"),
        (["commands", "sales", "--workers", "0"], "must be at least 1"),
    ],
)
def test_counts_that_size_a_process_are_bounded(
    argv: list[str], refusal: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A slip of the keyboard (a worker per integer up to 10**20) is a usage error, not a
    process that hangs building coroutines."""
    with pytest.raises(SystemExit) as exit:
        parser().parse_args(argv)
    assert exit.value.code == 2 and refusal in capsys.readouterr().err


def test_the_bounds_themselves_are_taken() -> None:
    assert parser().parse_args(["commands", "sales", "--workers", "256"]).workers == 256
    assert parser().parse_args(["demo", "--orders", "1000000"]).orders == 1_000_000
