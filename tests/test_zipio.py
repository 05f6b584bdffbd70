import io
import random
import zipfile

import pytest

from hiroml.config import IndexConfig
from hiroml.errors import BadInputError, ZipSafetyError
from hiroml.ingest.zipio import SafeZip, unsafe_name_reason


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_reads_members_exactly() -> None:
    payload = bytes(range(256)) * 1000
    data = _zip({"1_PA/IM-0001.dcm": payload, "1_PA/IM-0002.dcm": b"small"})
    with SafeZip(data) as z:
        assert z.members() == ["1_PA/IM-0001.dcm", "1_PA/IM-0002.dcm"]
        assert z.read("1_PA/IM-0001.dcm") == payload
        assert z.read("1_PA/IM-0002.dcm") == b"small"
        assert z.size("1_PA/IM-0001.dcm") == len(payload)


def test_stored_members_and_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "a.zip"
    p.write_bytes(_zip({"s/x.dcm": b"abc"}, zipfile.ZIP_STORED))
    with SafeZip(p) as z:
        assert z.read("s/x.dcm") == b"abc"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil.dcm", "traversal"),
        ("/etc/passwd", "absolute"),
        ("C:/x.dcm", "drive"),
        ("a/../../b.dcm", "traversal"),
        ("a\\..\\b.dcm", "traversal"),
    ],
)
def test_unsafe_names_are_refused_not_served(name: str, why: str) -> None:
    assert why in (unsafe_name_reason(name) or "")
    with SafeZip(_zip({name: b"x", "ok/1.dcm": b"y"})) as z:
        assert z.members() == ["ok/1.dcm"]
        assert z.rejected[0][0] == name
        with pytest.raises(BadInputError, match="no safe member"):
            z.read(name)


def test_corrupt_and_truncated_zips() -> None:
    good = _zip({"a/1.dcm": b"x" * 5000})
    with pytest.raises(BadInputError, match="not a readable zip"):
        SafeZip(b"PK\x03\x04 garbage" * 10)
    with pytest.raises(BadInputError, match="not a readable zip"):
        SafeZip(good[: len(good) // 2])


def test_damaged_member_fails_crc() -> None:
    payload = bytes(range(256)) * 64
    data = bytearray(_zip({"a/1.dcm": payload}, zipfile.ZIP_STORED))
    i = data.find(payload[:64]) + 100
    data[i] ^= 0xFF
    with SafeZip(bytes(data)) as z, pytest.raises(BadInputError, match="CRC"):
        z.read("a/1.dcm")


def test_zip_bomb_refused_before_inflating() -> None:
    bomb = _zip({"a/1.dcm": b"\0" * (50 * 1024 * 1024)})
    assert len(bomb) < 100_000
    with pytest.raises(ZipSafetyError, match="ratio"):
        SafeZip(bomb)


def test_member_count_and_size_caps() -> None:
    many = _zip({f"a/{i}.dcm": b"x" for i in range(30)})
    with pytest.raises(ZipSafetyError, match="30 members"):
        SafeZip(many, IndexConfig(max_members=20))
    big = _zip({"a/1.dcm": random.Random(0).randbytes(300_000)})
    with pytest.raises(ZipSafetyError, match="max_member_bytes"):
        SafeZip(big, IndexConfig(max_member_bytes=100_000))
    with pytest.raises(ZipSafetyError, match="max_total_bytes"):
        SafeZip(big, IndexConfig(max_total_bytes=100_000))


def test_lying_header_cannot_inflate_past_declared_size() -> None:
    payload = bytes(range(256)) * 1000
    data = bytearray(_zip({"a/1.dcm": payload}))
    # Shrink the declared size in both headers: inflating must stop and report.
    true = len(payload).to_bytes(4, "little")
    fake = (len(payload) // 2).to_bytes(4, "little")
    data = bytearray(bytes(data).replace(true, fake))
    with SafeZip(bytes(data)) as z, pytest.raises(BadInputError, match="header says"):
        z.read("a/1.dcm")
