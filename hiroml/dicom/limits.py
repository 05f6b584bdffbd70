"""Sizes checked before any pixel is decoded.

A header of a few bytes can promise an image of billions of pixels; a decoder trusts it and
allocates. :func:`check_pixels` derives what a member will decode to from the DICOM header,
(0028,0010) Rows, (0028,0011) Columns, (0028,0002) Samples per Pixel, (0028,0100) Bits
Allocated and (0028,0008) Number of Frames, and, for an encapsulated transfer syntax, from the
first frame's codestream header:

- JPEG (baseline, extended, lossless) and JPEG-LS: the SOFn / SOF55 segment (precision,
  height, width, components);
- JPEG 2000 and HTJ2K: the SIZ segment (Xsiz - XOsiz, Ysiz - YOsiz, Csiz, precision of the
  first component), in a raw codestream or inside a JP2 file's ``jp2c`` box;
- JPEG XL: the codestream's SizeHeader (height and width; ISO/IEC 18181-1 §D.2), in a bare
  codestream or inside the ISOBMFF container's ``jxlc`` (or first ``jxlp``) box;
- RLE Lossless: the number of segments in the 64-byte RLE header, which must be Samples per
  Pixel x Bits Allocated / 8.

Both must agree and stay within ``limits.max_pixels`` (per frame) and
``limits.max_decoded_bytes`` (all frames). Deflated Image Frame codestreams are checked against
the DICOM header's numbers only.

:func:`check_inflated` inflates the dataset of a Deflated Explicit VR Little Endian file
chunk by chunk, keeping nothing, and refuses one that would exceed ``max_decoded_bytes``
before pydicom inflates it whole.
"""

from __future__ import annotations

import struct
import zlib

from hiroml.config import LimitsConfig
from hiroml.dicom import uids
from hiroml.errors import BadInputError

DEFAULT = LimitsConfig()
_HEAD = 64 * 1024  # bytes of a codestream searched for its size header
_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, little endian
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOF55 = 0xF7  # JPEG-LS
_JPEG_FAMILY = frozenset(
    {
        uids.JPEG_BASELINE,
        uids.JPEG_EXTENDED,
        uids.JPEG_LOSSLESS,
        uids.JPEG_LOSSLESS_SV1,
        uids.JPEG_LS_LOSSLESS,
        uids.JPEG_LS_NEAR_LOSSLESS,
    }
)


def first_fragment(pixel_data: bytes | memoryview) -> bytes:
    """The start (up to 64 KiB) of the first fragment after the Basic Offset Table item of an
    encapsulated (7FE0,0010) Pixel Data value; b"" when there is none."""
    mv = memoryview(pixel_data)
    pos, seen = 0, 0
    while pos + 8 <= len(mv):
        if bytes(mv[pos : pos + 4]) != _ITEM:
            return b""
        (length,) = struct.unpack_from("<I", mv, pos + 4)
        if seen == 1:
            return bytes(mv[pos + 8 : pos + 8 + min(length, _HEAD)])
        seen += 1
        pos += 8 + length
    return b""


def jpeg_size(data: bytes) -> tuple[int, int, int, int, str] | None:
    """(rows, columns, components, precision, marker name) from the SOFn or SOF55 segment of a
    JPEG / JPEG-LS stream; None when ``data`` is not one or ends before that segment."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            pos += 2
            continue
        if marker == 0xDA:  # start of scan before any SOF
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF or marker == _SOF55:
            if pos + 10 > len(data):
                return None
            precision = data[pos + 4]
            rows, cols = struct.unpack_from(">HH", data, pos + 5)
            name = "JPEG-LS SOF55" if marker == _SOF55 else f"JPEG SOF{marker - 0xC0}"
            return rows, cols, data[pos + 9], precision, name
        pos += 2 + length
    return None


def j2k_size(data: bytes) -> tuple[int, int, int, int, str] | None:
    """(rows, columns, components, precision of the first, "JPEG 2000 SIZ") from the SIZ
    segment of a JPEG 2000 / HTJ2K codestream, raw or in a JP2 file; None when absent."""
    at = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: the codestream's first bytes
    if at < 0 or at + 4 + 38 + 1 > len(data):
        return None
    siz = at + 4
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, siz + 4)
    (csiz,) = struct.unpack_from(">H", data, siz + 36)
    precision = (data[siz + 38] & 0x7F) + 1
    return ysiz - yo, xsiz - xo, csiz, precision, "JPEG 2000 SIZ"


_JXL_CODESTREAM = b"\xff\x0a"
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \x0d\x0a\x87\x0a"
#: a SizeHeader's ``ratio`` (1..7) -> width = height x numerator / denominator
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


class _Bits:
    """Bits of ``data`` read least significant first, as JPEG XL packs them."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        if (self.pos + n + 7) // 8 > len(self.data):
            raise EOFError
        value = 0
        for i in range(n):
            byte = self.data[(self.pos + i) >> 3]
            value |= ((byte >> ((self.pos + i) & 7)) & 1) << i
        self.pos += n
        return value

    def size(self) -> int:
        """A SizeHeader dimension: ``U32(1 + u(9), 1 + u(13), 1 + u(18), 1 + u(30))``."""
        return 1 + self.u((9, 13, 18, 30)[self.u(2)])


def _jxl_codestream(data: bytes) -> bytes | None:
    """The start of the JPEG XL codestream of ``data``: itself, or the payload of the
    container's ``jxlc`` box or first ``jxlp`` box (after its 4-byte index)."""
    if data.startswith(_JXL_CODESTREAM):
        return data
    if not data.startswith(_JXL_CONTAINER):
        return None
    pos = len(_JXL_CONTAINER)
    while pos + 8 <= len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        kind, head = data[pos + 4 : pos + 8], 8
        if size == 1 and pos + 16 <= len(data):  # a 64-bit size follows the type
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        if kind == b"jxlc":
            return data[pos + head :]
        if kind == b"jxlp":
            return data[pos + head + 4 :]
        if size < head:  # 0: the last box, to the end of the file
            return None
        pos += size
    return None


def jxl_size(data: bytes) -> tuple[int, int, int, int, str] | None:
    """(rows, columns, 0, 0, "JPEG XL SizeHeader") from a JPEG XL codestream's SizeHeader
    (components and precision are not read: 0); None when ``data`` is not JPEG XL or ends
    before its SizeHeader does."""
    stream = _jxl_codestream(data)
    if stream is None or not stream.startswith(_JXL_CODESTREAM):
        return None
    bits = _Bits(stream[2:64])
    try:
        if bits.u(1):  # small: multiples of 8 up to 256
            rows = (bits.u(5) + 1) * 8
            ratio = bits.u(3)
            cols = (bits.u(5) + 1) * 8 if ratio == 0 else 0
        else:
            rows = bits.size()
            ratio = bits.u(3)
            cols = bits.size() if ratio == 0 else 0
    except EOFError:
        return None
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        cols = rows * num // den
    return rows, cols, 0, 0, "JPEG XL SizeHeader"


def _numbers(rows: int, cols: int, spp: int, bits: int, frames: int) -> str:
    return f"{rows} x {cols} x {spp} samples x {bits} bits x {frames} frames"


def check_pixels(
    *,
    tsyntax: str,
    rows: int,
    cols: int,
    samples: int,
    bits_allocated: int,
    frames: int,
    pixel_data: bytes | memoryview | None,
    label: str,
    limits: LimitsConfig | None = DEFAULT,
) -> None:
    """Raise :class:`BadInputError` naming ``label`` and the numbers when the member would
    decode to more than ``limits`` allows (not checked when ``limits`` is None), or when its
    codestream header (``pixel_data``, the raw (7FE0,0010) value, for an encapsulated
    ``tsyntax``) disagrees with the DICOM header."""
    frames = max(frames, 1)
    pixels = rows * cols
    decoded = pixels * max(samples, 1) * max((bits_allocated + 7) // 8, 1) * frames
    if limits is None:
        pass
    elif pixels > limits.max_pixels:
        raise BadInputError(
            f"{label}: the header says {rows} x {cols} = {pixels} pixels a frame, over "
            f"limits.max_pixels={limits.max_pixels}"
        )
    elif decoded > limits.max_decoded_bytes:
        raise BadInputError(
            f"{label}: the header says {_numbers(rows, cols, samples, bits_allocated, frames)}"
            f" = {decoded} bytes decoded, over limits.max_decoded_bytes="
            f"{limits.max_decoded_bytes}"
        )
    if pixel_data is None or not uids.is_encapsulated(tsyntax):
        return
    head = first_fragment(pixel_data)
    if tsyntax == uids.RLE_LOSSLESS:
        if len(head) < 64:
            return
        (segments,) = struct.unpack_from("<I", head, 0)
        want = max(samples, 1) * max(bits_allocated // 8, 1)
        if segments != want:
            raise BadInputError(
                f"{label}: the RLE header holds {segments} segments, the header "
                f"{samples} samples x {bits_allocated} bits needs {want}"
            )
        return
    if tsyntax in _JPEG_FAMILY:
        found = jpeg_size(head)
    elif tsyntax in uids.SYNTAXES and uids.SYNTAXES[tsyntax].decoder == uids.OPENJPEG:
        found = j2k_size(head)
    elif tsyntax in uids.SYNTAXES and uids.SYNTAXES[tsyntax].decoder == uids.LIBJXL:
        found = jxl_size(head)
    else:
        return
    if found is None:
        return
    r, c, comps, precision, what = found
    if (r, c) != (rows, cols) or comps not in (0, max(samples, 1)):  # 0: not read
        says = f"{r} x {c} x {comps} components" if comps else f"{r} x {c}"
        raise BadInputError(
            f"{label}: {what} says {says}, the header {rows} x {cols} x {samples} samples"
        )
    if bits_allocated and precision > bits_allocated:
        raise BadInputError(
            f"{label}: {what} says {precision}-bit samples, the header {bits_allocated} bits "
            "allocated"
        )


def meta_end(data: bytes) -> int | None:
    """Offset of the dataset after the File Meta Information of a Part 10 file whose
    (0002,0000) group length is present; None otherwise."""
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        return None
    if data[136:138] != b"UL" or len(data) < 144:
        return None
    (length,) = struct.unpack_from("<I", data, 140)
    return 144 + length


def check_inflated(data: bytes, *, label: str, limits: LimitsConfig = DEFAULT) -> None:
    """For a Part 10 file in Deflated Explicit VR Little Endian, inflate its dataset a chunk
    at a time, keeping nothing, and raise :class:`BadInputError` naming ``label`` when it
    exceeds ``limits.max_decoded_bytes``; other files pass unread."""
    end = meta_end(data)
    if end is None or uids.DEFLATED_LE.encode() not in data[:end]:
        return
    cap = limits.max_decoded_bytes
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    view = memoryview(data)[end:]
    total, step = 0, 1 << 20
    try:
        for i in range(0, len(view), step):
            chunk: bytes | memoryview = view[i : i + step]
            while chunk:
                total += len(d.decompress(chunk, step))
                if total > cap:
                    raise BadInputError(
                        f"{label}: the Deflated Explicit VR Little Endian dataset of "
                        f"{len(view)} bytes inflates to more than {cap} bytes "
                        "(limits.max_decoded_bytes)"
                    )
                chunk = d.unconsumed_tail
            if d.eof:
                break
    except zlib.error as e:
        raise BadInputError(f"{label}: the deflated dataset is damaged ({e})") from e
