"""One grammar of sizes, durations and CPU lists: jw and jw-server read a value the same way."""

from __future__ import annotations

import click
import pytest

from jobworker import units
from jobworker.cli._params import SIZE
from jobworker.server.main import ByteSize
from jobworker.units import canonical_cpu_list, parse_cpu_list, parse_size, size_text


@pytest.mark.parametrize("text", ["4096", "512k", "64M", "1.5G", "2GiB", "1TB", "9223372036854775807"])
def test_the_cli_and_the_server_read_a_size_alike(text: str) -> None:
    assert SIZE.convert(text, None, None) == ByteSize().convert(text, None, None) == parse_size(text)


def test_large_sizes_stay_exact() -> None:
    assert parse_size("9223372036854775807") == (1 << 63) - 1


def test_a_bad_size_says_the_grammar_on_both_sides() -> None:
    for param in (SIZE, ByteSize()):
        with pytest.raises(click.BadParameter, match="units are binary"):
            param.convert("1X", None, None)


@pytest.mark.parametrize(
    ("size", "text"), [(1 << 30, "1G"), (512 << 20, "512M"), (1536, "1536"), (3 << 29, "1536M")]
)
def test_size_text_is_the_exact_inverse(size: int, text: str) -> None:
    assert size_text(size) == text
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "cpus"), [("0", {0}), ("0-1,3", {0, 1, 3}), (" 3,1-2 ", {1, 2, 3})])
def test_cpu_lists(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


def test_cpu_lists_print_as_the_kernel_does() -> None:
    assert canonical_cpu_list("3,0,1,1-2") == "0-3"
    assert canonical_cpu_list("5,0-1,3") == "0-1,3,5"


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "3-1", "0,,1", "0-99999", "1.5"])
def test_bad_cpu_lists(text: str) -> None:
    with pytest.raises(ValueError, match="is not a CPU list"):
        parse_cpu_list(text)


# Points in time ----------------------------------------------------------------------------------

_NOON = 1_796_126_400 * 1_000_000_000  # 2026-12-01T12:00:00Z


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-12-01T12:00:00Z", _NOON),
        ("2026-12-01t12:00:00z", _NOON),
        ("2026-12-01 12:00:00Z", _NOON),
        ("2026-12-01T13:30:00+01:30", _NOON),
        ("2026-12-01T10:00:00-02:00", _NOON),
        ("2026-12-01T12:00:00.5Z", _NOON + 500_000_000),
        ("2026-12-01T12:00:00.123456789Z", _NOON + 123_456_789),
        # Digits past the nanosecond are dropped, not rounded.
        ("2026-12-01T12:00:00.1234567899Z", _NOON + 123_456_789),
    ],
)
def test_rfc3339_times(text: str, ns: int) -> None:
    assert units.parse_rfc3339(text) == ns
    assert units.parse_point_in_time(text, 0) == ns


@pytest.mark.parametrize(
    "text",
    ["2026-12-01", "2026-12-01T12:00:00", "2026-02-30T00:00:00Z", "2026-12-01T24:00:00Z", "12:00:00Z", "now"],
)
def test_not_rfc3339_times(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|point in time") as info:
        units.parse_point_in_time(text, 0)
    assert "\n" not in str(info.value)


def test_a_duration_is_that_long_ago() -> None:
    assert units.parse_point_in_time("10m", _NOON) == _NOON - 600 * 1_000_000_000
    assert units.parse_point_in_time("1.5", _NOON) == _NOON - 1_500_000_000


def test_rfc3339_text_is_fixed_width_utc_nanoseconds() -> None:
    assert units.rfc3339_text(_NOON + 5) == "2026-12-01T12:00:00.000000005Z"
    assert units.parse_rfc3339(units.rfc3339_text(_NOON + 123)) == _NOON + 123
