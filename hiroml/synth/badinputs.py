"""Bad inputs: one zip per kind, all in the last complete radiograph batch. Each must give
an error record (or, for one bad member of a good exam, a kept zip and one error), never
stop the build.

These are rows of the scenario table (:data:`hiroml.synth.scenarios.SCENARIOS`); each
returns the zip it planted.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.uid import ExplicitVRLittleEndian

from hiroml.synth.datamart import Batches, Datamart, PlannedZip, Planted
from hiroml.synth.factory import StudyInfo, dicom_bytes, make_cxr, zip_bytes
from hiroml.synth.phantoms import phantom_chest_2d
from hiroml.synth.radiographs import PA, pa_lat, radiograph, write_cxr
from hiroml.vocab import Action

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as written in little endian


def _bad_zip(dm: Datamart, b: Batches, pid: str, day: int, kind: str) -> PlannedZip:
    """A well-named zip of ``kind`` that must give an error record (expected: error)."""
    return dm.add_zip(
        b.cxr4, pid, dm.when(day), dm.hiro(), "XR-CHEST-PA", kind=kind, expected=Action.ERROR
    )


def _one_pa(
    dm: Datamart,
    z: PlannedZip,
    shape: tuple[int, int],
    uid_tag: str,
    transfer_syntax: str | None = None,
) -> None:
    """Write one PA radiograph of ``shape`` into ``z`` (transfer syntax cycled if not given)."""
    pa = radiograph(dm, shape, **PA, transfer_syntax=transfer_syntax)
    write_cxr(dm, z, [pa], uid_tag=uid_tag)


def _scratch(z: PlannedZip) -> PlannedZip:
    """A zip that is never written, to encode members before they are damaged."""
    return PlannedZip(z.batch, "tmp", z.time, truth=dict(z.truth), pid=z.pid)


def corrupt_zip(dm: Datamart, b: Batches) -> Planted:
    """A zip header followed by random bytes."""
    z = _bad_zip(dm, b, "1901", 50, "corrupt_zip")
    z.raw = b"PK\x03\x04" + dm.rng.bytes(4096)
    return Planted((z,))


def truncated_zip(dm: Datamart, b: Batches) -> Planted:
    """A good zip of one radiograph cut in half (its image is listed, never readable)."""
    z = _bad_zip(dm, b, "1902", 51, "truncated_zip")
    tmp = _scratch(z)
    _one_pa(dm, tmp, (128, 112), "truncated-zip", transfer_syntax=ExplicitVRLittleEndian)
    full = zip_bytes(tmp.members, z.time)
    z.raw = full[: len(full) // 2]
    for m, sop, _s, _b in tmp.sops:
        dm.cxr_images[sop]["zip"] = dm.cxr_images[sop]["zips"][0] = z.rel
        z.truth["bad_members"].append(m)
    return Planted((z,))


def non_dicom(dm: Datamart, b: Batches) -> Planted:
    """A text file named like a DICOM member, and a README."""
    z = _bad_zip(dm, b, "1903", 52, "non_dicom")
    z.members = [
        ("1_PA/IM-0001.dcm", b"This is not a DICOM file.\r\nExport failed.\r\n" * 20),
        ("README.txt", b"Exported by PACS viewer. Not for diagnostic use.\n"),
    ]
    z.truth["bad_members"] = ["1_PA/IM-0001.dcm", "README.txt"]
    return Planted((z,))


def truncated_dicom(dm: Datamart, b: Batches) -> Planted:
    """A DICOM file cut inside its header, before (7FE0,0010) Pixel Data."""
    z = _bad_zip(dm, b, "1904", 53, "truncated_dicom")
    tmp = _scratch(z)
    _one_pa(dm, tmp, (96, 96), "truncated-dicom", transfer_syntax=ExplicitVRLittleEndian)
    m, data = tmp.members[0]
    cut = data.index(PIXEL_DATA_TAG)
    z.members = [(m, data[: cut // 2])]
    z.truth["bad_members"] = [m]
    for _m, sop, _s, _b in tmp.sops:
        del dm.cxr_images[sop]
    return Planted((z,))


def no_pixel_data(dm: Datamart, b: Batches) -> Planted:
    """A radiograph dataset without (7FE0,0010) Pixel Data."""
    z = _bad_zip(dm, b, "1905", 54, "no_pixel_data")
    sex, age = dm.patient("1905")
    ds = make_cxr(
        phantom_chest_2d((64, 64), dm.rng, bits_stored=12),
        study=StudyInfo("1905", z.time, dm.uid("nopix", "study"), sex, age),
        sop_uid=dm.uid("nopix", "sop"),
        series_uid=dm.uid("nopix", "series"),
    )
    del ds.PixelData
    z.members = [("1_PA/IM-0001.dcm", dicom_bytes(ds))]
    z.truth["bad_members"] = ["1_PA/IM-0001.dcm"]
    return Planted((z,))


def bad_name(dm: Datamart, b: Batches) -> Planted:
    """A good radiograph in a zip whose name does not follow the tip sheet."""
    t = dm.when(55)
    z = dm.add_zip(
        b.cxr4,
        "1906",
        t,
        "",
        "",
        kind="bad_name",
        expected=Action.ERROR,
        file=f"1906-{t:%Y%m%d}-XR CHEST PA.zip",
    )
    _one_pa(dm, z, (96, 96), "bad-name")
    z.truth["bad_members"] = []
    return Planted((z,))


def path_traversal(dm: Datamart, b: Batches) -> Planted:
    """A member named ``../evil.dcm`` (must never be written outside the output)."""
    z = _bad_zip(dm, b, "1907", 56, "path_traversal")
    _one_pa(dm, z, (96, 96), "evil")
    (_m, data), (_m2, sop, s, _b) = z.members[0], z.sops[0]
    z.members = [("../evil.dcm", data)]
    z.sops = [("../evil.dcm", sop, s, True)]
    dm.cxr_images[sop]["member"] = "../evil.dcm"
    z.truth["bad_members"] = ["../evil.dcm"]
    return Planted((z,))


def mixed_bad_member(dm: Datamart, b: Batches) -> Planted:
    """A good PA + lateral exam whose lateral is cut inside its Pixel Data: the zip is
    kept, the member reported."""
    exam = dm.exam_id("cxr")
    z = dm.add_zip(
        b.cxr4,
        "1908",
        dm.when(57),
        dm.hiro(),
        "XR-CHEST-PA-LATERAL",
        kind="mixed_bad_member",
        exam=exam,
    )
    write_cxr(dm, z, pa_lat(dm), uid_tag=exam)
    m, data = z.members[1]
    pix_at = data.index(PIXEL_DATA_TAG)
    z.members[1] = (m, data[: pix_at + (len(data) - pix_at) // 2])  # cut in Pixel Data
    mm, sop, s, _b = z.sops[1]
    z.sops[1] = (mm, sop, s, True)
    z.truth["bad_members"] = [m]
    return Planted((z,))


#: The bad-input rows of the scenario table, in order.
BAD_INPUTS: tuple[Callable[[Datamart, Batches], Planted], ...] = (
    corrupt_zip,
    truncated_zip,
    non_dicom,
    truncated_dicom,
    no_pixel_data,
    bad_name,
    path_traversal,
    mixed_bad_member,
)
