"""Radiographs: plan one (phantom pixels, photometric, bits), write it into a zip, and
record its entry of ``cxr_images`` in the truth.

Random draws (shape, Bits Stored, photometric, phantom) come from the datamart's shared
stream in a fixed order: shape, bits, photometric, pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hiroml.synth.datamart import Datamart, PlannedZip
from hiroml.synth.factory import StudyInfo, dicom_bytes, make_cxr, values_hash
from hiroml.synth.phantoms import phantom_chest_2d
from hiroml.vocab import View

#: Where a view's image goes and how its series is labelled (folder, (0018,5101) View
#: Position, (0008,103E) Series Description, (0020,0011) Series Number) and the view the
#: truth expects.
PA: dict[str, Any] = {
    "folder": "1_PA",
    "view_position": "PA",
    "series_description": "PA",
    "series_number": 1,
    "view": View.FRONTAL,
}
LATERAL: dict[str, Any] = {
    "folder": "2_LATERAL",
    "view_position": "LL",
    "series_description": "LATERAL",
    "series_number": 2,
    "view": View.LATERAL,
    View.LATERAL: True,
}
AP_PORTABLE: dict[str, Any] = {
    "folder": "1_AP_PORTABLE",
    "view_position": "AP",
    "series_description": "AP PORTABLE",
    "series_number": 1,
    "view": View.FRONTAL,
    "sop_class": "CR",
    "rescale": (1.0, 0.0),
}
#: Fields of :class:`PlannedRadiograph` that :func:`hiroml.synth.factory.make_cxr` takes as is.
_HEADER_FIELDS = (
    "sop_class",
    "view_position",
    "series_description",
    "series_number",
    "instance_number",
    "photometric",
    "bits_stored",
    "transfer_syntax",
    "rescale",
    "windows",
    "voi_lut",
)


@dataclass
class PlannedRadiograph:
    """One radiograph to write: stored values (rows, columns) and its header choices."""

    folder: str
    file: str
    pixels: np.ndarray
    view_position: str | None
    series_description: str
    series_number: int
    photometric: str
    bits_stored: int
    transfer_syntax: str
    sop_class: str
    view: str
    rescale: tuple[float, float] | None = None
    windows: tuple[tuple[float, float], ...] = ()
    voi_lut: bool = False
    instance_number: int = 1

    @property
    def member(self) -> str:
        return f"{self.folder}/{self.file}"


def radiograph(
    dm: Datamart,
    shape: tuple[int, int] | None = None,
    *,
    folder: str,
    view_position: str | None,
    series_description: str,
    series_number: int,
    view: str,
    lateral: bool = False,
    sop_class: str = "DX",
    transfer_syntax: str | None = None,
    photometric: str | None = None,
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    windows: tuple[tuple[float, float], ...] | None = None,
    voi_lut: bool = False,
    file: str = "IM-0001.dcm",
) -> PlannedRadiograph:
    """Plan a radiograph; what is not given is drawn (size, bits, photometric) or cycled
    (transfer syntax). Pixels are inverted for MONOCHROME1; the default window spans 90 %
    of the stored range."""
    sp = dm.spec
    if shape is None:
        h = int(dm.rng.integers(sp.cxr_min, sp.cxr_max + 1))
        w = int(h * dm.rng.uniform(0.8, 1.0))
        shape = (h, w)
    bits = bits_stored if bits_stored is not None else int(dm.rng.choice([12, 14, 15, 16]))
    phot = photometric or ("MONOCHROME1" if dm.rng.random() < 0.3 else "MONOCHROME2")
    pix = phantom_chest_2d(shape, dm.rng, bits_stored=bits, lateral=lateral)
    if phot == "MONOCHROME1":
        pix = ((1 << bits) - 1 - pix).astype(np.uint16)
    if windows is None:
        vmax = (1 << bits) - 1
        windows = ((round(vmax * 0.45), round(vmax * 0.9)),)
    return PlannedRadiograph(
        folder=folder,
        file=file,
        pixels=pix,
        view_position=view_position,
        series_description=series_description,
        series_number=series_number,
        photometric=phot,
        bits_stored=bits,
        transfer_syntax=transfer_syntax or dm.next_syntax(),
        sop_class=sop_class,
        view=view,
        rescale=rescale,
        windows=windows,
        voi_lut=voi_lut,
    )


def pa_lat(dm: Datamart, *, lat_position: str = "LL") -> list[PlannedRadiograph]:
    """A PA and a lateral view, everything else drawn."""
    return [radiograph(dm, **PA), radiograph(dm, **{**LATERAL, "view_position": lat_position})]


def portable(dm: Datamart) -> list[PlannedRadiograph]:
    """One portable AP view (CR, identity rescale)."""
    return [radiograph(dm, **AP_PORTABLE)]


def write_cxr(
    dm: Datamart,
    z: PlannedZip,
    imgs: Sequence[PlannedRadiograph],
    *,
    uid_tag: str,
    study_uid: str | None = None,
) -> None:
    """Encode ``imgs`` into ``z`` (UIDs derived from ``uid_tag``) and record the truth.
    The first image carries the private (0020,4000) Image Comments."""
    sex, age = dm.patient(z.pid)
    study = StudyInfo(
        patient_id=z.pid,
        time=z.time,
        study_uid=study_uid or dm.uid(uid_tag, "study"),
        sex=sex,
        age=age,
        description=z.truth["description"] or "XR-CHEST",
    )
    for k, im in enumerate(imgs):
        series_uid = dm.uid(uid_tag, "series", im.series_number)
        sop = dm.uid(uid_tag, "sop", im.member)
        ds = make_cxr(
            im.pixels,
            study=study,
            sop_uid=sop,
            series_uid=series_uid,
            image_comments=k == 0,
            **{name: getattr(im, name) for name in _HEADER_FIELDS},
        )
        z.members.append((im.member, dicom_bytes(ds)))
        z.sops.append((im.member, sop, series_uid, False))
        _record(dm, z, im, sop, (int(ds.BitsStored), int(ds.BitsAllocated)), str(ds.SOPClassUID))


def _record(
    dm: Datamart,
    z: PlannedZip,
    im: PlannedRadiograph,
    sop: str,
    bits: tuple[int, int],
    sop_class_uid: str,
) -> None:
    """The ``cxr_images`` entry of ``sop`` (or one more holder of it)."""
    if sop in dm.cxr_images:
        dm.cxr_images[sop]["zips"].append(z.rel)
        return
    sc = im.sop_class == "SC"
    dm.cxr_images[sop] = {
        "zip": z.rel,
        "zips": [z.rel],
        "member": im.member,
        "exam": "",
        "view": View.UNKNOWN if sc else im.view,
        "view_position": im.view_position or "",
        "series_description": im.series_description,
        "photometric": im.photometric,
        "transfer_syntax": im.transfer_syntax,
        "bits_stored": bits[0],
        "bits_allocated": bits[1],
        "shape": [int(im.pixels.shape[0]), int(im.pixels.shape[1])],
        "rescale": None if sc or im.rescale is None else list(im.rescale),
        "windows": [] if sc else [list(w) for w in im.windows],
        "voi_lut": im.voi_lut and not sc,
        "pixel_hash": values_hash(im.pixels.astype(np.uint8) if sc else im.pixels),
        "sop_class": sop_class_uid,
        "keep": not sc,
        "drop_reason": "screen_save" if sc else "",
        "kind": "screen_save" if sc else "image",
    }


def share_members(dm: Datamart, src: PlannedZip, dst: PlannedZip, indices: Sequence[int]) -> None:
    """Deliver members ``indices`` of ``src`` again, byte for byte, in ``dst``."""
    for i in indices:
        dst.members.append(src.members[i])
        dst.sops.append(src.sops[i])
        if src.sops[i][1] in dm.cxr_images:
            dm.cxr_images[src.sops[i][1]]["zips"].append(dst.rel)


def copy_members(dm: Datamart, src: PlannedZip, dst: PlannedZip) -> None:
    """Deliver all of ``src``'s members again, byte for byte, in ``dst``."""
    share_members(dm, src, dst, range(len(src.members)))
