"""DICOM helpers shared by the index and both converters: parse a member's bytes, and decode
one frame of (7FE0,0010) Pixel Data with the decoder pinned for its transfer syntax.

Native decode with (0028,0101) Bits Stored masking (:func:`native_grey`, :func:`fix_bits`)
and (0028,1053)/(0028,1052) rescale parsing (:func:`rescale`) are defined here once; the UIDs
(transfer syntaxes, SOP classes) in :mod:`hiroml.dicom.uids`.

Parsing (:func:`parse`). A Part 10 file starts with a 128-byte preamble, ``DICM`` and the
(0002,xxxx) File Meta Information. Older modalities and some PACS exports write files without
the preamble (the meta group first) or without any meta (the dataset's group 0008 first).
pydicom reads those with ``force=True``; hiroml does so only when the first bytes parse as a
plausible group 0002 or 0008 element, infers the transfer syntax from the encoding as pydicom
does (implicit or explicit VR, little or big endian), writes it into
(0002,0010) Transfer Syntax UID and returns a note for the audit. Anything else that does not
parse stays a :class:`~hiroml.errors.BadInputError`.

Decoding (:func:`decode`). :data:`~hiroml.dicom.uids.SYNTAXES` is the one dispatch table: for each
(0002,0010) Transfer Syntax UID read, the library that decodes it and whether it is lossless.
The decoder actually used is returned with the array (:class:`Decoded`), so the shard meta
records it (``decoder``, for radiographs and CT volumes) and tests pin it: a silent fallback
to a slower path fails CI.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from hiroml.config import LimitsConfig
from hiroml.dicom import limits as _limits
from hiroml.dicom import rawheader
from hiroml.dicom.uids import (
    CHARLS,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    LIBDEFLATE,
    LIBJPEG_TURBO,
    LIBJXL,
    NUMPY,
    OPENJPEG,
    PYDICOM,
    PYLIBJPEG_RLE,
    SYNTAXES,
    uid_label,
)
from hiroml.errors import BadInputError, DecodeError

try:
    import imagecodecs as _imagecodecs
except ImportError:  # pragma: no cover - imagecodecs is a dependency; pydicom is the fallback
    _imagecodecs = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)
_PLAUSIBLE_GROUPS = (0x0002, 0x0008)


def _plausible_start(data: bytes) -> bool:
    """The first bytes are a (0002,xxxx) or (0008,xxxx) element tag, little or big endian:
    a DICOM stream without its preamble (or its meta group), not some other file."""
    if len(data) < 8:
        return False
    le = int.from_bytes(data[0:2], "little")
    be = int.from_bytes(data[0:2], "big")
    return le in _PLAUSIBLE_GROUPS or be in _PLAUSIBLE_GROUPS


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parsed member: the dataset, the offset where reading stopped (the (7FE0,0010) tag
    when the pixels were not read) and ``note``, "" or how a non-standard file was read."""

    dataset: Dataset
    stopped_at: int
    note: str = ""


def _dcmread(data: bytes, *, label: str, stop_before_pixels: bool, force: bool) -> Parsed:
    bio = io.BytesIO(data)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(bio, stop_before_pixels=stop_before_pixels, force=force)
    except InvalidDicomError:
        raise
    except Exception as e:  # pydicom raises many types on damaged files
        raise BadInputError(f"{label}: unreadable DICOM ({type(e).__name__}: {e})") from e
    for w in caught:
        if "End of file reached" in str(w.message):
            raise BadInputError(f"{label}: truncated DICOM ({w.message})")
    stopped_at = bio.tell()
    # The dataset keeps a reference to its file object: closed, it no longer holds the
    # member's bytes beside the parsed (7FE0,0010) Pixel Data (a whole volume for an
    # enhanced CT member).
    bio.close()
    return Parsed(ds, stopped_at)


def _inferred_syntax(ds: Dataset) -> str:
    """The transfer syntax of a dataset read without (0002,0010), from the encoding pydicom
    found: implicit VR little endian, explicit VR little endian or explicit VR big endian."""
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return ""
    if implicit:
        return IMPLICIT_VR_LE if little else ""
    return EXPLICIT_VR_LE if little else EXPLICIT_VR_BE


def parse(
    data: bytes,
    *,
    label: str,
    stop_before_pixels: bool = False,
    limits: LimitsConfig = _limits.DEFAULT,
) -> Parsed:
    """Parse one member's bytes (``label`` names it in errors, e.g. ``"<zip>: <member>"``).

    A file without the 128-byte preamble and ``DICM`` prefix, or without File Meta
    Information, is read with pydicom's ``force=True`` when it starts with a plausible
    group 0002 or 0008 element; its transfer syntax, when absent, is inferred from the
    encoding and set in (0002,0010) Transfer Syntax UID, and :attr:`Parsed.note` says so.
    Raises :class:`BadInputError` for anything that does not parse, or parses truncated, and
    for a Deflated Explicit VR Little Endian dataset that inflates beyond
    ``limits.max_decoded_bytes`` (checked before pydicom inflates it).
    """
    _limits.check_inflated(data, label=label, limits=limits)
    try:
        return _dcmread(data, label=label, stop_before_pixels=stop_before_pixels, force=False)
    except InvalidDicomError as e:
        if not _plausible_start(data):  # pydicom's message advises force=True: not for users
            raise BadInputError(
                f"{label}: not a DICOM file (no 'DICM' prefix after the 128-byte preamble, and "
                "its first bytes are no DICOM element)"
            ) from e
    try:
        parsed = _dcmread(data, label=label, stop_before_pixels=stop_before_pixels, force=True)
    except InvalidDicomError as e:  # pragma: no cover - force=True does not raise it
        raise BadInputError(f"{label}: not a DICOM file ({e})") from e
    ds = parsed.dataset
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    what = "no 128-byte preamble and DICM prefix"
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None:
        inferred = _inferred_syntax(ds)
        if not inferred or not rawheader.has(ds, "SOPInstanceUID"):
            raise BadInputError(
                f"{label}: not a DICOM file (no preamble, no File Meta Information, and no "
                "readable dataset)"
            )
        ds.file_meta.TransferSyntaxUID = UID(inferred)
        what += f", no File Meta Information: transfer syntax inferred as {uid_label(inferred)}"
    return Parsed(ds, parsed.stopped_at, f"read without a Part 10 header ({what})")


@dataclass(frozen=True, slots=True)
class Decoded:
    """Stored values of one frame: (rows, columns) integers ((rows, columns, 3) for colour),
    signed when (0028,0103) Pixel Representation is 1, only the (0028,0101) Bits Stored bits
    kept; and ``decoder``, the library that decoded them (a :data:`SYNTAXES` decoder, or
    ``"pydicom"`` where the pinned one was unavailable or refused the data)."""

    array: np.ndarray
    decoder: str


def transfer_syntax(ds: Dataset) -> str:
    """(0002,0010) Transfer Syntax UID; implicit VR little endian when absent (PS3.5 10.1)."""
    meta = getattr(ds, "file_meta", None)
    ts = rawheader.get(meta, "TransferSyntaxUID", "") if meta is not None else ""
    return str(ts) if ts else IMPLICIT_VR_LE


def fix_bits(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Stored values as numbers: keep the low (0028,0101) Bits Stored bits and, for
    (0028,0103) Pixel Representation 1, sign-extend them. ``arr`` is an integer array as a
    decoder or the raw buffer gives it (possibly unsigned); returns a new array or ``arr``."""
    nbits = arr.dtype.itemsize * 8
    udt = np.dtype(f"u{arr.dtype.itemsize}")
    sdt = np.dtype(f"i{arr.dtype.itemsize}")
    if bits_stored <= 0 or bits_stored >= nbits:
        return arr.view(sdt if signed else udt)
    shift = nbits - bits_stored
    u = arr.view(udt)
    if signed:
        return (u << np.asarray(shift, udt)).view(sdt) >> np.asarray(shift, sdt)
    if int(u.max()) < (1 << bits_stored):  # nothing in the unused high bits: no copy
        return u
    return u & np.asarray((1 << bits_stored) - 1, udt)


_ABSENT = object()


def _required(ds: Dataset, keyword: str) -> Any:
    """The value of an element; AttributeError, as ``ds.<keyword>`` raises, when absent."""
    value = rawheader.get(ds, keyword, _ABSENT)
    return getattr(ds, keyword) if value is _ABSENT else value


@dataclass(frozen=True, slots=True)
class _Layout:
    rows: int
    cols: int
    samples: int
    alloc: int
    frames: int
    planar: int
    photometric: str

    @classmethod
    def of(cls, ds: Dataset) -> _Layout:
        return cls(
            rows=int(_required(ds, "Rows")),
            cols=int(_required(ds, "Columns")),
            samples=int(rawheader.get(ds, "SamplesPerPixel", 1) or 1),
            alloc=int(rawheader.get(ds, "BitsAllocated", 0) or 0),
            frames=int(rawheader.get(ds, "NumberOfFrames", 1) or 1),
            planar=int(rawheader.get(ds, "PlanarConfiguration", 0) or 0),
            photometric=str(rawheader.get(ds, "PhotometricInterpretation", "")).strip().upper(),
        )

    @property
    def grey_or_rgb(self) -> bool:
        """One sample, or three in (0028,0004) RGB: values as stored, no colour conversion
        (YBR and its subsampled layouts are left to pydicom, which converts them to RGB)."""
        return self.samples == 1 or (self.samples == 3 and self.photometric == "RGB")

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.samples * self.alloc // 8

    def shape(self) -> tuple[int, ...]:
        return (self.rows, self.cols) if self.samples == 1 else (self.rows, self.cols, 3)


def _from_native(
    buf: bytes | memoryview | np.ndarray, lay: _Layout, *, big_endian: bool
) -> np.ndarray:
    """One frame of native pixel bytes (starting at ``buf[0]``) as (rows, cols[, samples])."""
    dtype = np.dtype(f"{'>' if big_endian else '<'}u{lay.alloc // 8}")
    n = lay.rows * lay.cols * lay.samples
    arr = np.frombuffer(buf, dtype=dtype, count=n)
    if big_endian and lay.alloc > 8:
        arr = arr.astype(dtype.newbyteorder("="))
    if lay.samples == 1:
        return arr.reshape(lay.rows, lay.cols)
    if lay.planar == 1:
        return arr.reshape(lay.samples, lay.rows, lay.cols).transpose(1, 2, 0)
    return arr.reshape(lay.rows, lay.cols, lay.samples)


def native_grey(
    buf: bytes | memoryview,
    *,
    rows: int,
    cols: int,
    bits_allocated: int,
    bits_stored: int,
    signed: bool,
) -> np.ndarray:
    """One grey frame of native little-endian (7FE0,0010) Pixel Data (from ``buf[0]``) as
    stored values, (rows, cols): (0028,0101) Bits Stored kept, sign-extended when (0028,0103)
    Pixel Representation is 1 (:func:`fix_bits`). For callers that already hold the header
    values (the CT converter reads them from the index record, not from the dataset);
    ``buf`` must hold at least rows x cols samples."""
    lay = _Layout(rows, cols, 1, bits_allocated, 1, 0, "MONOCHROME2")
    return fix_bits(_from_native(buf, lay, big_endian=False), bits_stored, signed)


def rescale(ds: Dataset) -> tuple[float, float]:
    """(0028,1053) Rescale Slope and (0028,1052) Rescale Intercept as numbers; 1.0 and 0.0
    where absent or empty (no rescale). A (0028,3000) Modality LUT Sequence is the caller's."""
    return _rescale_value(ds, "RescaleSlope", 1.0), _rescale_value(ds, "RescaleIntercept", 0.0)


def _rescale_value(ds: Dataset, keyword: str, absent: float) -> float:
    fast = rawheader.decimals(ds, keyword)
    if fast is not None and len(fast) == 1:
        return fast[0]
    value = rawheader.get(ds, keyword, None)
    return absent if value in (None, "") else float(value)


def _native(ds: Dataset, ts: str, lay: _Layout, frame: int) -> np.ndarray | None:
    if lay.alloc not in (8, 16, 32) or not lay.grey_or_rgb:
        return None
    buf = ds.PixelData
    start = frame * lay.frame_bytes
    if len(buf) < start + lay.frame_bytes:
        raise DecodeError(
            f"pixel data truncated: {len(buf)} bytes, frame {frame} of {lay.rows}x{lay.cols}x"
            f"{lay.alloc} bits x {lay.samples} samples needs {start + lay.frame_bytes} "
            f"({uid_label(ts)})"
        )
    big = ts == EXPLICIT_VR_BE
    if big and lay.alloc == 8 and ds["PixelData"].VR == "OW":
        # 8-bit samples in OW words: big endian swaps each byte pair (PS3.5 8.1.1).
        words = np.frombuffer(buf, dtype=">u2", count=(len(buf) // 2)).astype("<u2")
        return _from_native(words.tobytes()[start:], lay, big_endian=False)
    return _from_native(memoryview(buf)[start:], lay, big_endian=big)


def _codec(name: str) -> Callable[..., np.ndarray] | None:
    fn = getattr(_imagecodecs, name, None) if _imagecodecs is not None else None
    return fn if callable(fn) else None


def _encapsulated_frame(ds: Dataset, lay: _Layout, frame: int) -> bytes:
    return get_frame(ds.PixelData, frame, number_of_frames=lay.frames)


def _grey_only(lay: _Layout) -> bool:
    return lay.samples == 1


def _jpeg(ds: Dataset, lay: _Layout, frame: int) -> np.ndarray | None:
    fn = _codec("jpeg8_decode")
    if fn is None or not _grey_only(lay):
        return None
    return np.asarray(fn(_encapsulated_frame(ds, lay, frame)))


def _jpegls(ds: Dataset, lay: _Layout, frame: int) -> np.ndarray | None:
    fn = _codec("jpegls_decode")
    if fn is None or not _grey_only(lay):
        return None
    return np.asarray(fn(_encapsulated_frame(ds, lay, frame)))


def _jpeg2k(ds: Dataset, lay: _Layout, frame: int) -> np.ndarray | None:
    fn = _codec("jpeg2k_decode")  # OpenJPEG >= 2.5 also decodes HTJ2K (Part 15) streams
    if fn is None or not _grey_only(lay):
        return None
    arr = np.asarray(fn(_encapsulated_frame(ds, lay, frame), numthreads=1))
    if arr.dtype.kind in "iu" and arr.dtype.itemsize * 8 != lay.alloc and lay.alloc in (8, 16):
        arr = arr.astype(f"{arr.dtype.kind}{lay.alloc // 8}")
    return arr


def _jpegxl(ds: Dataset, lay: _Layout, frame: int) -> np.ndarray | None:
    fn = _codec("jpegxl_decode")
    if fn is None or not lay.grey_or_rgb:
        return None
    return np.asarray(fn(_encapsulated_frame(ds, lay, frame), numthreads=1))


def _deflated_frame(ds: Dataset, lay: _Layout, frame: int) -> np.ndarray | None:
    """Deflated Image Frame Compression (PS3.5 A.4.11): each frame is the native frame's
    bytes compressed with raw deflate (RFC 1951)."""
    fn = _codec("deflate_decode")
    if fn is None or lay.alloc not in (8, 16, 32) or not lay.grey_or_rgb:
        return None
    # libdeflate inflates into a buffer of the known frame size (a trailing pad byte is fine)
    raw = fn(_encapsulated_frame(ds, lay, frame), raw=True, out=lay.frame_bytes)
    if len(raw) < lay.frame_bytes:
        raise DecodeError(
            f"deflated frame {frame} inflates to {len(raw)} bytes, {lay.rows}x{lay.cols}x"
            f"{lay.alloc} bits x {lay.samples} samples need {lay.frame_bytes}"
        )
    return _from_native(raw, lay, big_endian=False)


def _rle(ds: Dataset, lay: _Layout, frame: int) -> np.ndarray | None:
    ds.pixel_array_options(index=frame if lay.frames > 1 else None, decoding_plugin="pylibjpeg")
    return np.asarray(ds.pixel_array)


_FAST: dict[str, Callable[[Dataset, _Layout, int], np.ndarray | None]] = {
    LIBJPEG_TURBO: _jpeg,
    CHARLS: _jpegls,
    OPENJPEG: _jpeg2k,
    LIBJXL: _jpegxl,
    LIBDEFLATE: _deflated_frame,
    PYLIBJPEG_RLE: _rle,
}


def _pydicom(ds: Dataset, lay: _Layout, frame: int) -> np.ndarray:
    ds.pixel_array_options(index=frame if lay.frames > 1 else None, decoding_plugin="")
    return np.asarray(ds.pixel_array)


def check_limits(ds: Dataset, *, limits: LimitsConfig | None = None) -> None:
    """:func:`hiroml.dicom.limits.check_pixels` on a dataset: :class:`DecodeError` with the
    numbers when its first frame's codestream header disagrees with (0028,0010) Rows,
    (0028,0011) Columns, (0028,0002) Samples per Pixel or (0028,0100) Bits Allocated, or, with
    ``limits``, when its pixels would decode beyond them. The build checks the configured
    ``limits`` where it reads each member (:mod:`hiroml.ingest.index`), before any decode."""
    _checked_layout(ds, transfer_syntax(ds), limits)


def _checked_layout(ds: Dataset, ts: str, limits: LimitsConfig | None) -> _Layout:
    """:func:`check_limits` of a dataset of transfer syntax ``ts``; its layout."""
    try:
        lay = _Layout.of(ds)
    except (AttributeError, TypeError, ValueError) as e:
        raise DecodeError(f"no usable (0028,0010) Rows / (0028,0011) Columns: {e}") from e
    raw = rawheader.get(ds, "PixelData", None)
    try:
        _limits.check_pixels(
            tsyntax=ts, rows=lay.rows, cols=lay.cols, samples=lay.samples,
            bits_allocated=lay.alloc, frames=lay.frames,
            pixel_data=raw if isinstance(raw, bytes) else None,
            label=uid_label(ts), limits=limits,
        )  # fmt: skip
    except DecodeError:
        raise
    except BadInputError as e:
        raise DecodeError(str(e)) from None
    return lay


def decode(ds: Dataset, *, frame: int = 0, limits: LimitsConfig | None = None) -> Decoded:
    """Stored values of frame ``frame`` (0-based) of (7FE0,0010) Pixel Data, and the decoder.

    The decoder is the one :data:`SYNTAXES` pins for (0002,0010) Transfer Syntax UID
    (uncompressed: :func:`numpy.frombuffer`; JPEG: libjpeg-turbo; JPEG-LS: CharLS;
    JPEG 2000 and HTJ2K: OpenJPEG; JPEG XL: libjxl; Deflated Image Frame: libdeflate, all
    through imagecodecs; RLE: pylibjpeg-rle through pydicom). Colour JPEG family images,
    layouts the fast path does not take, syntaxes not in the table, and data the pinned
    decoder refuses go through pydicom's pixel backends (``decoder == "pydicom"``).
    Raises :class:`DecodeError` naming the transfer syntax; ``ValueError`` for a ``frame``
    outside (0028,0008) Number of Frames. Before any decoder runs: :func:`check_limits`, with
    ``limits``.
    """
    ts = transfer_syntax(ds)
    if not rawheader.has(ds, "PixelData"):
        raise DecodeError(f"no (7FE0,0010) Pixel Data ({uid_label(ts)})")
    lay = _checked_layout(ds, ts, limits)
    if not 0 <= frame < lay.frames:
        raise ValueError(f"frame {frame} is outside the {lay.frames} frame(s) of the image")
    bits = int(rawheader.get(ds, "BitsStored", 0) or 0)
    signed = int(rawheader.get(ds, "PixelRepresentation", 0) or 0) == 1
    syntax = SYNTAXES.get(ts)
    try:
        arr: np.ndarray | None = None
        decoder = syntax.decoder if syntax is not None else PYDICOM
        if syntax is not None and syntax.decoder == NUMPY:
            arr = _native(ds, ts, lay, frame)
        elif syntax is not None:
            try:
                arr = _FAST[syntax.decoder](ds, lay, frame)
            except DecodeError:
                raise
            except Exception as e:  # codecs raise their own error types: pydicom tries
                logger.debug("%s refused the data (%s); pydicom decodes", syntax.decoder, e)
                arr = None
            if arr is not None and arr.shape != lay.shape():
                logger.debug("%s gave shape %s; pydicom decodes", syntax.decoder, arr.shape)
                arr = None
        if arr is None or arr.dtype.kind not in "iu":
            # pydicom applies (0028,0101) Bits Stored and (0028,0103) itself
            return Decoded(_pydicom(ds, lay, frame), PYDICOM)
        return Decoded(fix_bits(arr, bits, signed), decoder)
    except DecodeError:
        raise
    except Exception as e:  # pixel plugins raise anything; we name the syntax
        raise DecodeError(f"cannot decode pixel data ({uid_label(ts)}): {e}") from e
