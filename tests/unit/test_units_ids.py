import pytest

from gureum.errors import InvalidInput
from gureum.ids import check_name, looks_like_id, new_id
from gureum.units import GIB, MIB, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        ("512M", "B", 512 * MIB),
        ("2G", "B", 2 * GIB),
        ("1.5GiB", "B", 1536 * MIB),
        ("512", "M", 512 * MIB),
        (" 3 g ", "B", 3 * GIB),
        ("0", "M", 0),
        (7, "G", 7 * GIB),
    ],
)
def test_parse_size(text, unit, expected):
    assert parse_size(text, default_unit=unit) == expected


@pytest.mark.parametrize("text", ["-1", "-512M", "abc", "12Q", "", "1..2G", "M", True])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidInput):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), (" 2w ", 1209600)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0d", "-1d", "1y", "1.5h", "d", "", "12 hours"])
def test_parse_duration_rejects(text):
    with pytest.raises(InvalidInput, match="duration"):
        parse_duration(text)


def test_format_size():
    assert format_size(512 * MIB) == "512M"
    assert format_size(int(1.5 * GIB)) == "1.5G"
    assert format_size(100) == "100B"


@pytest.mark.parametrize("name", ["web1", "a", "db-primary-2", "x" * 63])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "web/1", "web 1", "x" * 64, "x" * 200, "-web", "web-", "Web", "1web", "we_b", "a,b"],
)
def test_invalid_names(name):
    with pytest.raises(InvalidInput) as exc:
        check_name(name)
    assert exc.value.code == "invalid-input"
    assert len(exc.value.message) < 250  # a 200-character name is not echoed whole


def test_ids():
    ident = new_id("i-")
    assert looks_like_id(ident, "i-")
    assert not looks_like_id("web1", "i-")
    assert new_id("i-") != new_id("i-")
