"""Every numeric option of ``python -m totes`` refuses what is not a whole number in its range
("nan", "inf", negative, fractional, absurd), naming the option, before any command runs; the
types come from one place (``totes_tools.cli``, over ``totes.settings.bounded_int``, the rule
the Lambda settings use)."""

from __future__ import annotations

import argparse

import pytest

from totes_tools import cli


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, option string, action) for every option of every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings:
            yield path, action.option_strings[-1], action


def numeric_options() -> list[tuple[tuple[str, ...], str, object]]:
    return [
        (path, flag, action.type)
        for path, flag, action in _options(cli.build_parser())
        if action.type is not None and action.type not in (str, cli.SCHEMA_OPTION)
    ]


# The command line's numeric options as this issue lists them, and the ranges they take.
EXPECTED = {
    (("source", "create"), "--scale"): (1, 10_000_000),
    (("source", "create"), "--seed"): (0, 2**32 - 1),
    (("source", "simulate"), "--steps"): (1, 1_000_000),
    (("source", "simulate"), "--seed"): (0, 2**32 - 1),
    (("local-aws",), "--port"): (1, 65_535),
    (("run",), "--max-batch-rows"): (1, 50_000_000),
    (("run",), "--chunk-rows"): (1, 5_000_000),
    (("demo",), "--scale"): (1, 10_000_000),
    (("demo",), "--rounds"): (1, 1_000),
    (("bench",), "--scale"): (1, 10_000_000),
    (("iceberg-bench",), "--scale"): (1, 10_000_000),
    (("iceberg-bench",), "--cycles"): (1, 1_000),
    (("iceberg-bench",), "--maintenance-age-hours"): (1, 1_000),
    (("iceberg-bench",), "--maintain-every"): (1, 1_000),
    (("bench",), "--floor-rounds"): (1, 1_000),
    (("bench",), "--small-steps"): (1, 1_000_000),
    (("bench",), "--max-batch-rows"): (1, 50_000_000),
    (("bench",), "--batch-sweep"): (1, 50_000_000),
    (("bench",), "--pipeline-rounds"): (1, 1_000),
    (("bench",), "--load-workers"): (1, 1_000),
    (("warehouse", "verify"), "--range-keys"): (1, 2**31),
    (("warehouse", "verify"), "--show"): (0, 1_000_000),
    (("sam-local", "serve"), "--port"): (1, 65_535),
    (("sam-local", "check"), "--scale"): (1, 10_000_000),
    (("sam-local", "check"), "--seed"): (0, 2**32 - 1),
}
BAD = ["nan", "NaN", "inf", "-inf", "-5", "0.5", "1e12", "1e3", "99999999999999999999", "", "x"]


def test_every_numeric_option_is_one_of_the_shared_types_and_none_is_a_bare_int_or_float():
    found = {(path, flag): kind for path, flag, kind in numeric_options()}

    assert sorted(found) == sorted(EXPECTED)
    assert not [k for k, kind in found.items() if kind in (int, float)]
    shared = {v for k, v in vars(cli).items() if k.endswith("_OPTION")}
    assert set(found.values()) <= shared


@pytest.mark.parametrize(("where", "flag"), sorted(EXPECTED))
def test_each_numeric_option_takes_its_whole_range_and_nothing_else(where, flag, capsys):
    low, high = EXPECTED[(where, flag)]
    kind = {(p, f): k for p, f, k in numeric_options()}[(where, flag)]
    assert (kind(str(low)), kind(str(high)), kind(f" {high} ")) == (low, high, high)
    refused = [str(low - 1), str(high + 1), *BAD]

    messages = []
    for value in refused:
        with pytest.raises(SystemExit) as exited:
            cli.build_parser().parse_args([*where, f"{flag}={value}"])
        assert exited.value.code == 2
        messages.append(capsys.readouterr().err.strip().splitlines()[-1])

    wanted = f"error: argument {flag}: must be a whole number from {low:,} to {high:,}"
    assert [m.split(": ", 1)[1] for m in messages] == [wanted] * len(refused)


@pytest.mark.parametrize("command", ["migrate", "grant-loader"])
@pytest.mark.parametrize("bad", ["Public", "wh; DROP", "", "a" * 64, "1wh"])
def test_the_warehouse_schema_option_takes_only_a_schema_name(command, bad, capsys):
    extra = ["--role", "r"] if command == "grant-loader" else []
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["warehouse", command, "--url", "u", *extra, "--schema", bad])
    err = capsys.readouterr().err
    assert "argument --schema: must be a schema name" in err
