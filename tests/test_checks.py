"""The shared checks of seeds and of paths to write to."""

import os

import pytest

from betavae.checks import MAX_SEED, check_output_path, check_seed, shown
from betavae.errors import ConfigError


@pytest.mark.parametrize("seed", [0, 1, 12345, MAX_SEED])
def test_seeds_in_range_pass(seed):
    assert check_seed(seed) == seed


@pytest.mark.parametrize("seed", [-1, -(2**63), MAX_SEED + 1, 2**64, 10**5000, True, 1.0, "3", None],
                         ids=["-1", "-2**63", "2**63", "2**64", "10**5000", "True", "1.0", "str", "None"])
def test_seeds_out_of_range_or_not_whole_numbers_are_refused(seed):
    with pytest.raises(ConfigError, match=r"seed must be a whole number from 0 to 2\*\*63 - 1") as exc:
        check_seed(seed)
    assert len(str(exc.value)) < 200  # a 5,000-digit seed is not printed whole


def test_paths_that_can_be_made_pass(tmp_path):
    assert check_output_path(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert check_output_path(tmp_path) == tmp_path  # exists: whether it may be reused is decided later
    assert check_output_path(tmp_path / ("é" * 127)) == tmp_path / ("é" * 127)  # 254 bytes


@pytest.mark.parametrize("make, message", [
    (lambda t: t / "file" / "run", "is below .*file, which is a file, not a folder"),
    (lambda t: t / "file" / "a" / "b", "is below .*file, which is a file"),
    (lambda t: t / ("x" * 256), "256 bytes long, more than the 255"),
    (lambda t: t / ("é" * 128) / "run", "256 bytes long"),
    (lambda t: str(t / "bad") + os.fsdecode(b"\xff"), r"bad\\xff is not valid UTF-8"),
    (lambda t: str(t / "bad\ud800"), "not valid UTF-8"),
    (lambda t: str(t / "nul\x00x"), "NUL"),
    (lambda t: "", "is empty"),
    (lambda t: t / "/".join(["y" * 200] * 25), "bytes long as an absolute path"),
])
def test_paths_that_cannot_be_made_are_refused(tmp_path, make, message):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=message) as exc:
        check_output_path(make(tmp_path), "--out")
    assert "\n" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_shown_keeps_messages_on_one_line():
    assert shown("a\nb\x1e" + os.fsdecode(b"\xff")) == "a\\nb\\x1e\\xff"
    assert shown("a" * 50 + "b" * 50) == "a" * 18 + "..." + "b" * 19  # the middle left out
    assert shown(2**200) == "a 201-bit number"
