"""The DICOM UIDs hiroml knows: transfer syntaxes and the decoder of each (:data:`SYNTAXES`, the
one dispatch table), and the (0008,0016) SOP Class UIDs that hold no image
(:data:`NON_IMAGE_SOP_CLASSES`) and Secondary Capture.

Transfer syntaxes newer than the installed pydicom (JPEG XL 1.2.840.10008.1.2.4.110-.112,
Deflated Image Frame Compression 1.2.840.10008.1.2.8.1) are known here, not in pydicom's UID
dictionary (never changed): :func:`is_transfer_syntax`, :func:`is_little_endian`,
:func:`is_deflated` and :func:`is_encapsulated` answer for them and ask pydicom for the rest;
:func:`pydicom.dcmread` reads their datasets as explicit VR little endian.
"""

from __future__ import annotations

from dataclasses import dataclass

import pydicom
from pydicom.uid import UID

from hiroml.records import Instance, Problem
from hiroml.vocab import Action

# pydicom.uid's constants, under the names the dispatch table and the tests use; the four
# newer than pydicom 3.0 are spelled here (PS3.6 Table A-1).
IMPLICIT_VR_LE = pydicom.uid.ImplicitVRLittleEndian
EXPLICIT_VR_LE = pydicom.uid.ExplicitVRLittleEndian
DEFLATED_LE = pydicom.uid.DeflatedExplicitVRLittleEndian
EXPLICIT_VR_BE = pydicom.uid.ExplicitVRBigEndian
JPEG_BASELINE = pydicom.uid.JPEGBaseline8Bit
JPEG_EXTENDED = pydicom.uid.JPEGExtended12Bit
JPEG_LOSSLESS = pydicom.uid.JPEGLossless
JPEG_LOSSLESS_SV1 = pydicom.uid.JPEGLosslessSV1
JPEG_LS_LOSSLESS = pydicom.uid.JPEGLSLossless
JPEG_LS_NEAR_LOSSLESS = pydicom.uid.JPEGLSNearLossless
JPEG_2000_LOSSLESS = pydicom.uid.JPEG2000Lossless
JPEG_2000 = pydicom.uid.JPEG2000
HTJ2K_LOSSLESS = pydicom.uid.HTJ2KLossless
HTJ2K_LOSSLESS_RPCL = pydicom.uid.HTJ2KLosslessRPCL
HTJ2K = pydicom.uid.HTJ2K
JPEG_XL_LOSSLESS = UID("1.2.840.10008.1.2.4.110")
JPEG_XL_RECOMPRESSION = UID("1.2.840.10008.1.2.4.111")
JPEG_XL = UID("1.2.840.10008.1.2.4.112")
RLE_LOSSLESS = pydicom.uid.RLELossless
DEFLATED_IMAGE_FRAME = UID("1.2.840.10008.1.2.8.1")

# Native (uncompressed) pixel data: implicit/explicit VR little endian, deflated, big endian.
UNCOMPRESSED = frozenset(pydicom.uid.UncompressedTransferSyntaxes)
# What the index reads without a copy: little endian, not deflated (offsets are the file's).
UNCOMPRESSED_LE = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE})

# Decoder names, as recorded in the shard meta ("decoder").
NUMPY = "numpy"
LIBJPEG_TURBO = "libjpeg-turbo"
CHARLS = "charls"
OPENJPEG = "openjpeg"
LIBJXL = "libjxl"
LIBDEFLATE = "libdeflate"
PYLIBJPEG_RLE = "pylibjpeg-rle"
PYDICOM = "pydicom"


@dataclass(frozen=True, slots=True)
class Syntax:
    """One row of the dispatch table. ``lossless``: the syntax only allows lossless coding
    (decoded values are the encoder's input, bit for bit); ``False`` where it may be lossy."""

    uid: str
    name: str
    decoder: str
    lossless: bool


_TABLE = (
    Syntax(IMPLICIT_VR_LE, "Implicit VR Little Endian", NUMPY, True),
    Syntax(EXPLICIT_VR_LE, "Explicit VR Little Endian", NUMPY, True),
    Syntax(DEFLATED_LE, "Deflated Explicit VR Little Endian", NUMPY, True),
    Syntax(EXPLICIT_VR_BE, "Explicit VR Big Endian", NUMPY, True),
    Syntax(JPEG_BASELINE, "JPEG Baseline (Process 1)", LIBJPEG_TURBO, False),
    Syntax(JPEG_EXTENDED, "JPEG Extended (Process 2 and 4)", LIBJPEG_TURBO, False),
    Syntax(JPEG_LOSSLESS, "JPEG Lossless (Process 14)", LIBJPEG_TURBO, True),
    Syntax(JPEG_LOSSLESS_SV1, "JPEG Lossless, SV1", LIBJPEG_TURBO, True),
    Syntax(JPEG_LS_LOSSLESS, "JPEG-LS Lossless", CHARLS, True),
    Syntax(JPEG_LS_NEAR_LOSSLESS, "JPEG-LS Near-Lossless", CHARLS, False),
    Syntax(JPEG_2000_LOSSLESS, "JPEG 2000 Lossless", OPENJPEG, True),
    Syntax(JPEG_2000, "JPEG 2000", OPENJPEG, False),
    Syntax(HTJ2K_LOSSLESS, "HTJ2K Lossless", OPENJPEG, True),
    Syntax(HTJ2K_LOSSLESS_RPCL, "HTJ2K Lossless RPCL", OPENJPEG, True),
    Syntax(HTJ2K, "HTJ2K", OPENJPEG, False),
    Syntax(JPEG_XL_LOSSLESS, "JPEG XL Lossless", LIBJXL, True),
    Syntax(JPEG_XL_RECOMPRESSION, "JPEG XL JPEG Recompression", LIBJXL, False),
    Syntax(JPEG_XL, "JPEG XL", LIBJXL, False),
    Syntax(RLE_LOSSLESS, "RLE Lossless", PYLIBJPEG_RLE, True),
    Syntax(DEFLATED_IMAGE_FRAME, "Deflated Image Frame Compression", LIBDEFLATE, True),
)
SYNTAXES: dict[str, Syntax] = {s.uid: s for s in _TABLE}

# Standard transfer syntaxes that pydicom 3.0 does not know yet (its UID properties raise for
# them): all explicit VR little endian datasets with encapsulated pixel data (PS3.5 A.4).
# hiroml asks the functions below, never pydicom's UID dictionary, which it leaves as it is.
_NEWER_THAN_PYDICOM = frozenset(
    {JPEG_XL_LOSSLESS, JPEG_XL_RECOMPRESSION, JPEG_XL, DEFLATED_IMAGE_FRAME}
)


def is_transfer_syntax(uid: str) -> bool:
    """Whether ``uid`` is a transfer syntax: one of :data:`SYNTAXES` or one pydicom knows."""
    return uid in _NEWER_THAN_PYDICOM or UID(uid).is_transfer_syntax


def is_little_endian(uid: str) -> bool:
    """Whether datasets in transfer syntax ``uid`` are little endian."""
    return uid in _NEWER_THAN_PYDICOM or UID(uid).is_little_endian


def is_deflated(uid: str) -> bool:
    """Whether transfer syntax ``uid`` deflates the whole dataset (not only the pixels)."""
    return uid not in _NEWER_THAN_PYDICOM and UID(uid).is_deflated


def is_encapsulated(uid: str) -> bool:
    """Whether transfer syntax ``uid`` stores (7FE0,0010) Pixel Data encapsulated."""
    return uid in _NEWER_THAN_PYDICOM or UID(uid).is_encapsulated


def uid_label(uid: str) -> str:
    """``"<name> <uid>"`` when the UID is known, else the UID (``"(none)"`` when empty)."""
    if not uid:
        return "(none)"
    name = SYNTAXES[uid].name if uid in SYNTAXES else UID(uid).name
    return f"{name} {uid}" if name and name != uid else uid


#: (0008,0016) SOP Class UID prefixes of objects that hold no image to read, with what they
#: are: structured reports (dose reports and key objects included), presentation states,
#: waveforms, raw data and registrations, encapsulated documents, RT objects, real world
#: value mappings.
NON_IMAGE_SOP_CLASSES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.9.", "waveform"),
    ("1.2.840.10008.5.1.4.1.1.66", "raw data / registration"),
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.481.", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.67", "real world value mapping"),
)
SR_PREFIX = NON_IMAGE_SOP_CLASSES[0][0]  # structured reports, dose SR included
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants .7.1-.7.4


def non_image_kind(sop_class: str) -> str | None:
    """What a non-image (0008,0016) SOP Class UID holds ("structured report", ...), or None
    for an image SOP class."""
    for prefix, kind in NON_IMAGE_SOP_CLASSES:
        if sop_class.startswith(prefix):
            return kind
    return None


def is_secondary_capture(sop_class: str) -> bool:
    """(0008,0016) SOP Class UID is Secondary Capture Image Storage or a multi-frame variant
    (1.2.840.10008.5.1.4.1.1.7[.1-.4]; not 1.2.840.10008.5.1.4.1.1.77, the VL images)."""
    return sop_class == SECONDARY_CAPTURE or sop_class.startswith(SECONDARY_CAPTURE + ".")


def member_problem(
    inst: Instance, stage: str, reason: str, action: Action, *, kept_as: str = "", detail: str = ""
) -> Problem:
    """An audit problem about one DICOM member: the zip, batch and member of its record."""
    return Problem(
        zip=inst.zip,
        batch=inst.batch,
        member=inst.member,
        stage=stage,
        reason=reason,
        action=action,
        kept_as=kept_as,
        detail=detail,
    )
