import os
import shutil
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from hiroml.config import IndexConfig
from hiroml.ingest.discover import discover
from hiroml.ingest.index import build_index, instance_from_dataset
from hiroml.vocab import Action

BATCH = "CXR-UPDATE-20200523-COMPLETE"


def _dcm(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.fixture()
def datamart(tmp_path: Path) -> Path:
    root = tmp_path / "dm"
    b = root / BATCH
    b.mkdir(parents=True)
    ct = _dcm("CT_small.dcm")
    mr = _dcm("MR_small.dcm")
    no_pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = "1.2.3.4.5"
    tmp = tmp_path / "nopix.dcm"
    no_pixels.save_as(tmp)
    sr = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for kw in ("PixelData", "Rows", "Columns"):
        delattr(sr, kw)
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    sr.SOPInstanceUID = "1.2.3.4.6"
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path)
    _write_zip(
        b / "1_20200301-140030_A1_XR-CHEST.zip", {"1_PA/IM-0001.dcm": ct, "2_LAT/IM-0001.dcm": mr}
    )
    _write_zip(
        b / "2_20200301-140030_A2_XR-CHEST.zip",
        {
            "1_PA/IM-0001.dcm": ct,
            "1_PA/notes.txt": b"not dicom",
            "1_PA/IM-0002.dcm": mr[: len(mr) // 2],
            "1_PA/IM-0003.dcm": tmp.read_bytes(),
            "9_DOSE/IM-0001.dcm": sr_path.read_bytes(),
            "../evil.dcm": ct,
        },
    )
    (b / "3_20200301-140030_A3_XR-CHEST.zip").write_bytes(os.urandom(2000))
    return root


def _index(root: Path, db: Path, workers: int = 1):  # type: ignore[no-untyped-def]
    d = discover(root)
    return build_index(
        root, d.zips, db_path=db, limits=IndexConfig(), workers=workers, progress=False
    )


def test_records_hold_the_header(datamart: Path, tmp_path: Path) -> None:
    r = _index(datamart, tmp_path / "i.sqlite")
    ref = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct = next(i for i in r.instances if i.zip.startswith("1_") and i.member == "1_PA/IM-0001.dcm")
    assert ct.sop_uid == ref.SOPInstanceUID
    assert ct.series_uid == ref.SeriesInstanceUID
    assert ct.modality == "CT" and ct.rows == 128 and ct.columns == 128
    assert ct.position == tuple(float(v) for v in ref.ImagePositionPatient)
    assert ct.orientation == tuple(float(v) for v in ref.ImageOrientationPatient)
    assert ct.pixel_spacing == tuple(float(v) for v in ref.PixelSpacing)
    assert ct.rescale_intercept == float(ref.RescaleIntercept)
    assert ct.kernel == "STANDARD"
    assert ct.transfer_syntax == str(ref.file_meta.TransferSyntaxUID)
    assert ct.batch == BATCH and ct.rel_zip == f"{BATCH}/1_20200301-140030_A1_XR-CHEST.zip"
    assert ct.folder == "1_PA"
    # Same pixels in another zip: same fingerprint; other pixels: another one.
    same = next(i for i in r.instances if i.zip.startswith("2_") and i.sop_uid == ct.sop_uid)
    mr = next(i for i in r.instances if i.member == "2_LAT/IM-0001.dcm")
    assert same.pixel_hash == ct.pixel_hash and len(ct.pixel_hash) == 32
    assert mr.pixel_hash != ct.pixel_hash


def test_bad_inputs_become_problems_and_the_rest_is_indexed(datamart: Path, tmp_path: Path) -> None:
    r = _index(datamart, tmp_path / "i.sqlite")
    assert len(r.instances) == 4  # zip 1: 2; zip 2: the CT and the dose report
    dose = next(i for i in r.instances if i.sop_uid == "1.2.3.4.6")
    assert not dose.has_pixels and dose.pixel_hash == "" and dose.rows == 0
    reasons = {(p.zip[:2], p.member): p.reason for p in r.problems}
    assert "not a DICOM file" in reasons[("2_", "1_PA/notes.txt")]
    assert (
        "truncated" in reasons[("2_", "1_PA/IM-0002.dcm")]
        or "unreadable" in reasons[("2_", "1_PA/IM-0002.dcm")]
    )
    assert "traversal" in reasons[("2_", "../evil.dcm")]
    assert "without (7FE0,0010) Pixel Data" in reasons[("2_", "1_PA/IM-0003.dcm")]
    assert "not a readable zip" in reasons[("3_", "")]
    assert all(p.action is Action.ERROR for p in r.problems)
    assert all(p.zip and p.batch == BATCH for p in r.problems)


def test_cache_reads_only_what_changed(datamart: Path, tmp_path: Path) -> None:
    db = tmp_path / "i.sqlite"
    first = _index(datamart, db)
    assert (first.read, first.cached) == (3, 0)
    again = _index(datamart, db)
    assert (again.read, again.cached) == (0, 3)
    assert again.instances == first.instances and again.problems == first.problems

    touched = datamart / BATCH / "1_20200301-140030_A1_XR-CHEST.zip"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = _index(datamart, db)
    assert (third.read, third.cached) == (1, 2)
    assert third.instances == first.instances

    (datamart / BATCH / "2_20200301-140030_A2_XR-CHEST.zip").unlink()
    fourth = _index(datamart, db)
    assert (fourth.read, fourth.removed) == (0, 1)
    assert not [i for i in fourth.instances if i.zip.startswith("2_")]
    assert not [p for p in fourth.problems if p.zip.startswith("2_")]


def test_workers_give_the_same_index(datamart: Path, tmp_path: Path) -> None:
    one = _index(datamart, tmp_path / "a.sqlite")
    two = _index(datamart, tmp_path / "b.sqlite", workers=2)
    assert one.instances == two.instances and one.problems == two.problems


def test_cache_follows_the_datamart(datamart: Path, tmp_path: Path) -> None:
    db = tmp_path / "i.sqlite"
    _index(datamart, db)
    other = tmp_path / "other"
    shutil.copytree(datamart, other)
    moved = _index(other, db)
    assert moved.read == 3  # another root: the cache is not trusted


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",  # implicit VR
        "MR_small_bigendian.dcm",  # big endian: read whole by pydicom
        "image_dfl.dcm",  # deflated: read whole by pydicom
        "MR_small_RLE.dcm",  # encapsulated, with trailing padding after the delimiter
        "JPEG2000.dcm",  # encapsulated
    ],
)
def test_raw_pixels_sliced_from_the_bytes_equal_pydicoms(name: str) -> None:
    import xxhash

    from hiroml.ingest.index import read_member

    data = _dcm(name)
    ds, pixels = read_member(data, label=name)
    assert "PixelData" not in ds or name in ("MR_small_bigendian.dcm", "image_dfl.dcm")
    full = pydicom.dcmread(get_testdata_file(name))
    assert pixels is not None and bytes(pixels) == full.PixelData
    inst = instance_from_dataset(
        ds, batch="b", zip_name="z", member="m", member_size=1, pixels=pixels
    )
    assert inst.pixel_hash == xxhash.xxh3_128_hexdigest(full.PixelData)


def test_encapsulated_pixels_without_delimiter_are_truncated() -> None:
    from hiroml.errors import BadInputError
    from hiroml.ingest.index import read_member

    data = _dcm("JPEG2000.dcm")
    with pytest.raises(BadInputError, match="truncated DICOM"):
        read_member(data[:-40], label="cut.dcm")


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"])
def test_header_values_read_once_are_those_of_ds_get(name: str) -> None:
    """Each header keyword is read once by tag: the same values as ds.get (several
    values as a list, an empty element as None; tests/test_rawheader.py compares the rest)."""
    from hiroml.ingest.index import _HEADER_KEYWORDS, _HEADER_TABLE, header_values

    assert all(tag for _, tag, _ in _HEADER_TABLE), "a keyword that pydicom does not know"
    ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
    values = header_values(ds)
    assert values, "no header value read"
    for kw in _HEADER_KEYWORDS:
        want = ds.get(kw)
        got = values.get(kw)
        if want in ("", None):
            assert got in ("", None) and (kw in values) == (kw in ds), kw
        else:
            assert got == (list(want) if isinstance(want, pydicom.multival.MultiValue) else want), (
                kw
            )
