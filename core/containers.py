"""Which decoder may read an upload, and structure checks on its container that need no decoder.

The first bytes decide the one decoder that may read the upload. Before it runs, the container is walked
for what decoders do not refuse: a PNG's sizes, checksums and inflated size, bytes appended after a GIF's,
PNG's or WebP's end (where a polyglot hides its script), a JPEG's scan count (each scan a full decoding pass).
The walk also notes where the metadata lies that decoders would keep and the result does not carry (a PNG's text
and private chunks, a JPEG's comments and application segments, a GIF's comments), so that the decoder is shown the
file without it.
"""
from __future__ import annotations

import bisect
import io
import re
import struct
import zlib
from dataclasses import dataclass
from itertools import accumulate

import png
from PIL.PngImagePlugin import MAX_TEXT_CHUNK

from core.errors import InvalidImage, TooManyPixels
from core.png_encoder import SIGNATURE as PNG_SIGNATURE

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")

# Magic numbers: the first bytes decide which single decoder may read the upload.
SIGNATURES = (
    (PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)
PNG_CRITICAL_CHUNKS = (b"IHDR", b"PLTE", b"IDAT", b"IEND")
# Chunks that say how a PNG's levels map to colour, apart from its ICC profile: gamma, primaries, sRGB intent,
# and the coding-independent code points and mastering volume and light levels of an HDR image. They come
# before the pixel data, each once and of its one length (PNG 3rd edition): viewers ignore a copy of another length
# or a second copy, so only the first well-formed one is carried into the answer, and a chunk padded to megabytes is
# neither copied out of the upload nor written.
PNG_COLOUR_CHUNK_LENGTHS = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"cICP": 4, b"mDCV": 24, b"cLLI": 8}
MAX_PNG_PROFILE_NAME = 79  # an iCCP chunk's name, before its NUL
# The ancillary chunks the decoder is shown: transparency, the ICC profile (whose copies the memory budget counts),
# the resolution, and an animation's control and frames (to refuse an animation). The others the result does not carry
# (docs/inputs.md, "Metadata"), or takes from this walk (the orientation, the colour chunks), and Pillow would keep
# some outside the memory budget: text inflated up to 1 MiB a chunk (60 zTXt chunks of a 62 kB upload held 61 MiB)
# and private chunks (a lower-case second letter) as they stand, up to the upload's size again. The decoder is not
# shown them (``WithoutSpans``).
PNG_DECODER_CHUNKS = (b"tRNS", b"iCCP", b"pHYs", b"acTL", b"fcTL", b"fdAT")

# What decoders raise on corrupt data: Pillow's plugins and pypng use all of these.
CORRUPT_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                       TypeError, ZeroDivisionError, zlib.error, png.Error)

# Scans a JPEG may hold. Encoders write 1 (baseline), 3 (non-interleaved), 6 or 10 (libjpeg's progressive
# script for grey or colour) and mozjpeg's searched scripts stay within a few dozen; each scan costs a full
# pass of the decoder over the image, so a file of a million empty scans decodes for minutes.
MAX_JPEG_SCANS = 100
# Decoders read a container's chunks, segments and sub-blocks one at a time in Python (Pillow's PNG, JPEG and GIF
# headers, and the walks here), and keep a little of each: 30 MB of empty ones held a worker for 10 to 50 s and up
# to 1.4 GB for a 16x16 image, none of it counted by the memory budget, which goes by the image's size. Encoders
# write a few dozen pieces of metadata beside pixel data in pieces of kilobytes (libpng's IDAT chunks are 8 kB, a
# GIF's sub-blocks 255 bytes: 4,000 and 130,000 of them in a 32 MB file), so these caps leave files as encoders
# write them alone and cost at most a second.
MAX_PNG_CHUNKS = 50_000
MAX_JPEG_SEGMENTS = 10_000
# Fill bytes (0xFF) and stray bytes between a JPEG's segments, which decoders skip one at a time.
MAX_JPEG_PADDING_BYTES = 65_536
MAX_GIF_SUB_BLOCKS = 500_000
# A WebP's chunks, which libwebp keeps a record of each of: 3 million empty ones, a 22 MiB upload, took 137 MiB to open.
# Encoders write a few, and one a frame in an animation (which is refused, whatever its length).
MAX_WEBP_CHUNKS = 10_000
# A BMP's run-length compressions (RLE8, RLE4). The most bytes a pixel takes in them is 4 (a delta escape moving
# one pixel); an escape that moves no pixel costs Pillow's decoder, written in Python, a step all the same.
# A TIFF's strips or tiles (Pillow makes an object of each as it opens the file, before our checks could run on
# what it read) and the entries of its first directory (tags: encoders write a few dozen).
MAX_TIFF_STRIPS = 100_000
MAX_TIFF_ENTRIES = 65_535
TIFF_STRIP_OFFSETS, TIFF_TILE_WIDTH, TIFF_TILE_LENGTH, TIFF_TILE_OFFSETS = 273, 322, 323, 324
# The value of a directory entry, by its type: SHORT, LONG, LONG8.
TIFF_INTEGER_TYPES = {3: "H", 4: "I", 16: "Q"}
BMP_RLE_COMPRESSIONS = (1, 2)
BMP_RLE_BYTES_PER_PIXEL = 4
# Pixels described by bit masks, and where the alpha mask lies in an info header long enough to hold one.
BMP_BITFIELDS = 3
BMP_HEADER_WITH_ALPHA_MASK, BMP_ALPHA_MASK_AT = 56, 66
# A JPEG's application segments (APP0 to APP15) and comments (COM). Pillow keeps every one, up to the upload's size,
# outside the memory budget, and joins the EXIF ones; the decoder is shown only those the picture is read from: the
# last JFIF and Adobe segments (the colour space and resolution libjpeg and Pillow take from them), the first EXIF
# segment (Pillow's orientation and resolution) and the ICC profile's segments (whose copies the budget counts).
JPEG_APPLICATION_MARKERS = frozenset(range(0xE0, 0xF0))
JPEG_COMMENT_MARKER = 0xFE
JPEG_LAST_KEPT = ((0xE0, b"JFIF"), (0xEE, b"Adobe"))
JPEG_FIRST_KEPT = ((0xE1, b"Exif\x00\x00"),)
JPEG_ALL_KEPT = ((0xE2, b"ICC_PROFILE\x00"),)
# A GIF's comment extension, which Pillow joins whole into the image's info; the decoder is not shown it.
GIF_COMMENT_LABEL = 0xFE
# What decoders copy of the metadata they must be shown (a WebP's length and a TIFF's offsets do not allow hiding
# any), which the memory budget counts (core/memory.py): a WebP's first EXIF and XMP chunks, and the values a TIFF's
# first directory holds apart from its entries, but for its ICC profile (whose copies are counted apart). Pillow reads
# no more of a directory's values than the file's length.
WEBP_METADATA_CHUNKS = (b"EXIF", b"XMP ")
TIFF_ICC_PROFILE = 34675
TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
# Start-of-frame markers (SOF0 to SOF15 but DHT, JPG and DAC), whose segment gives the sample precision, and the one
# precision Pillow reads.
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_PRECISION = 8
# Markers without a length field: SOI, EOI, TEM and the restart markers.
JPEG_STANDALONE_MARKERS = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})
# The next marker after entropy-coded data: 0xFF, any fill bytes, then neither a stuffed 0x00 nor a restart marker.
JPEG_NEXT_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    exif: memoryview | None  # the eXIf chunk's body, in place: it may be as long as the upload
    colour_chunks: tuple[bytes, ...] = ()  # whole chunks, as the file holds them


@dataclass(frozen=True)
class Container:
    """What the walk of an upload's container found: a PNG's header, and where the metadata lies that the decoder is
    not shown (each span from its first byte to past its last)."""

    png: PngHeader | None = None
    hidden: tuple[tuple[int, int], ...] = ()
    metadata_bytes: int = 0  # the metadata the decoder is shown and copies (WEBP_METADATA_CHUNKS, TIFF_TYPE_BYTES)


@dataclass(frozen=True)
class TiffEntry:
    """A tag of a TIFF directory as the file holds it: its type, its count of values, the entry's value field, and
    where the entry lies, in which byte order and layout (BigTIFF's or not)."""

    kind: int
    count: int
    stored: bytes
    at: int
    byte_order: str
    big: bool

    @property
    def value(self) -> int:
        """Its first value, where it is an integer the entry holds itself; else 0."""
        values = self._inline()
        return values[0] if values else 0

    def values(self, data: bytes, most: int) -> tuple[int, ...]:
        """Its first ``most`` integer values, from the entry or the offset it gives; () where they are no integers
        or lie past the end (the decoder judges that)."""
        integer = TIFF_INTEGER_TYPES.get(self.kind)
        if integer is None:
            return ()
        inline = self._inline()
        if inline:
            return inline[:most]
        (offset,) = struct.unpack_from(self.byte_order + ("Q" if self.big else "I"), self.stored)
        wanted = min(self.count, most)
        if offset + wanted * struct.calcsize(integer) > len(data):
            return ()
        return struct.unpack_from(f"{self.byte_order}{wanted}{integer}", data, offset)

    def _inline(self) -> tuple[int, ...]:
        integer = TIFF_INTEGER_TYPES.get(self.kind)
        if integer is None or not self.count or self.count * struct.calcsize(integer) > len(self.stored):
            return ()
        return struct.unpack_from(f"{self.byte_order}{self.count}{integer}", self.stored)


def describe_accepted() -> str:
    return ", ".join(ACCEPTED_FORMATS)


def sniff_format(data: bytes) -> str:
    """The accepted format ``data`` starts like; 400 naming the accepted ones when it starts like none."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, image_format in SIGNATURES:
        if data.startswith(signature):
            return image_format
    raise InvalidImage(f"the upload is not an image in an accepted format ({describe_accepted()}): "
                       f"its first bytes match none of them")


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """400 for an image without pixels, 413 for one over ``max_pixels``; the message names both sizes."""
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooManyPixels(f"the image is {width}x{height} = {width * height} pixels; "
                            f"the limit is {max_pixels} input pixels (MAX_INPUT_PIXELS)")


def check(data: bytes, image_format: str, max_pixels: int) -> Container:
    """The container checks of ``image_format`` (a PNG's 413 past ``max_pixels``), and what they found."""
    if image_format == "GIF":
        return Container(hidden=_check_gif(data))
    if image_format == "WEBP":
        _check_riff_end(data)
        return Container(metadata_bytes=_walk_webp(data))
    if image_format == "JPEG":
        return Container(hidden=_check_jpeg_scans(data))
    if image_format == "BMP":
        _check_bmp_runs(data)
        _check_bmp_alpha(data)
    if image_format == "TIFF":
        _check_tiff_pieces(data, max_pixels)
        return Container(metadata_bytes=_tiff_metadata_bytes(data))
    return _check_png(data, max_pixels) if image_format == "PNG" else Container()


def _check_png(data: bytes, max_pixels: int) -> Container:
    """Walk the chunks: sizes from IHDR before any pixel, CRCs of critical chunks, nothing after IEND."""
    view = memoryview(data)
    header: PngHeader | None = None
    exif = None
    colour_chunks: list[bytes] = []
    carried: set[bytes] = set()
    hidden: list[tuple[int, int]] = []
    pixel_data: list[memoryview] = []
    position = len(PNG_SIGNATURE)
    for chunks in range(1, MAX_PNG_CHUNKS + 2):
        if chunks > MAX_PNG_CHUNKS:
            raise InvalidImage(f"the PNG image has more than {MAX_PNG_CHUNKS} chunks; encoders write a few dozen "
                               f"and pixel data in chunks of kilobytes, and each costs the decoder a step")
        if position + 12 > len(data):
            raise InvalidImage("the PNG image is truncated: it ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if not kind.isalpha():
            raise InvalidImage(f"the PNG image is corrupt: {kind!r} at byte {position + 4} is not a chunk type")
        end = position + 12 + length
        if end > len(data):
            raise InvalidImage(f"the PNG image is truncated: its {kind.decode()} chunk runs past the end of the file")
        body = view[position + 8:end - 4]
        _check_png_chunk(kind, body, view[end - 4:end], first=header is None)
        if header is None:
            width, height, bit_depth, colour_type = struct.unpack(">IIBB", body[:10])
            check_pixels((width, height), max_pixels)
            header = PngHeader(width, height, bit_depth, None)
        elif kind == b"eXIf":
            exif = body
        elif kind == b"iCCP":
            _check_png_profile(body)
        elif kind == b"IDAT":
            pixel_data.append(body)
        elif PNG_COLOUR_CHUNK_LENGTHS.get(kind) == length and not pixel_data and kind not in carried:
            carried.add(kind)
            colour_chunks.append(bytes(view[position:end]))
        if kind not in PNG_CRITICAL_CHUNKS and kind not in PNG_DECODER_CHUNKS:
            hidden.append((position, end))
        position = end
        if kind == b"IEND":
            break
    if position != len(data):
        raise InvalidImage(f"the PNG image has {len(data) - position} bytes after its IEND chunk "
                           f"(another file appended to it, e.g. a polyglot); only a plain PNG is accepted")
    if header.bit_depth == 16:
        _check_inflated_size(pixel_data, header, colour_type)
    return Container(PngHeader(header.width, header.height, header.bit_depth, exif, tuple(colour_chunks)),
                     tuple(hidden))


class WithoutSpans(io.RawIOBase):
    """The bytes of an upload less some spans, as a file a decoder reads, seeks and tells in: read in place, no copy
    of the upload made."""

    def __init__(self, data: bytes, spans: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        view = memoryview(data)
        starts, ends = (0, *(end for _, end in spans)), (*(start for start, _ in spans), len(data))
        self._pieces = [view[start:end] for start, end in zip(starts, ends)]
        self._firsts = [0, *accumulate(len(piece) for piece in self._pieces)]  # each piece's first offset, the end
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._firsts[-1]}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill ``buffer`` across the pieces, as far as they go: a short read is the end of the file."""
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target) and self._position < self._firsts[-1]:
            index = bisect.bisect_right(self._firsts, self._position) - 1
            piece = self._pieces[index][self._position - self._firsts[index]:]
            count = min(len(piece), len(target) - filled)
            target[filled:filled + count] = piece[:count]
            filled += count
            self._position += count
        return filled


def _check_png_profile(body: memoryview) -> None:
    """400 naming the limit for an ICC profile longer than Pillow's PNG reader takes, which it reports as corrupt.
    A profile that does not inflate is left to the reader, which drops it as viewers do."""
    compressed = body[bytes(body[:MAX_PNG_PROFILE_NAME + 1]).find(b"\x00") + 2:]
    try:
        inflater = zlib.decompressobj()
        inflater.decompress(compressed, MAX_TEXT_CHUNK)
    except zlib.error:
        return
    if inflater.unconsumed_tail:
        raise InvalidImage(f"the PNG image's ICC profile (iCCP) is longer than {MAX_TEXT_CHUNK} bytes, the most the "
                           f"PNG reader takes (an RGB profile is a few kB to a few hundred); embed a shorter one")


def _check_inflated_size(pixel_data: list[memoryview], header: PngHeader, colour_type: int) -> None:
    """Refuse IDAT that inflates past what the header declares (a zlib bomb), 1 MiB at a time.

    Pillow inflates only into the image it allocated; pypng, which reads 16-bit PNGs, has no such bound.
    """
    planes = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour_type, 4)
    # twice the raw size: room for the extra filter bytes of Adam7 interlacing
    limit = 2 * header.height * (1 + header.width * planes * 2) + 64
    inflater = zlib.decompressobj()
    inflated = 0
    try:
        for body in pixel_data:
            pending: bytes | memoryview = body
            while pending:
                inflated += len(inflater.decompress(pending, 1 << 20))
                if inflated > limit:
                    raise InvalidImage(f"the PNG image's pixel data inflates to more than {limit} bytes, "
                                       f"far more than {header.width}x{header.height} pixels need (a zlib bomb)")
                pending = inflater.unconsumed_tail
    except zlib.error as error:
        raise InvalidImage(f"the PNG image's pixel data is corrupt ({error})") from error


def _check_png_chunk(kind: bytes, body: memoryview, crc: memoryview, first: bool) -> None:
    if first and (kind != b"IHDR" or len(body) != 13):
        raise InvalidImage("the PNG image is corrupt: it does not start with a 13-byte IHDR chunk")
    if kind[:1].isupper() and kind not in PNG_CRITICAL_CHUNKS:
        raise InvalidImage(f"the PNG image has an unknown critical chunk {kind.decode()!r}")
    if kind in PNG_CRITICAL_CHUNKS and zlib.crc32(body, zlib.crc32(kind)) != struct.unpack(">I", crc)[0]:
        raise InvalidImage(f"the PNG image is corrupt: the checksum of its {kind.decode()} chunk is wrong")


def _check_gif(data: bytes) -> tuple[tuple[int, int], ...]:
    """Reject an empty logical screen, and bytes after the trailer (where a GIF/JavaScript polyglot hides its script);
    where the comments lie.

    Pillow would quietly size a 0x0 screen from its first frame; viewers show nothing.
    """
    if len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        if not width or not height:
            raise InvalidImage(f"the GIF image has no pixels: its logical screen is {width}x{height}")
    end, comments = _gif_blocks(data)
    if end is not None and end < len(data):
        raise InvalidImage(f"the GIF image has {len(data) - end} bytes after its trailer "
                           f"(another file appended to it, e.g. a polyglot); only a plain GIF is accepted")
    return comments


def _gif_blocks(data: bytes) -> tuple[int | None, tuple[tuple[int, int], ...]]:
    """Offset just past the GIF trailer, None when the blocks end early (the decoder judges those); and where each
    comment extension lies before that. 400 past MAX_GIF_SUB_BLOCKS sub-blocks."""
    comments: list[tuple[int, int]] = []
    if len(data) < 13:
        return None, ()
    position = 13 + _colour_table_size(data[10])
    sub_blocks = 0
    while position < len(data):
        block = data[position]
        if block == 0x3B:
            return position + 1, tuple(comments)
        if block == 0x21:
            first = position + 2
        elif block == 0x2C and position + 10 <= len(data):
            first = position + 11 + _colour_table_size(data[position + 9])
        else:
            return None, tuple(comments)
        end, sub_blocks = _skip_sub_blocks(data, first, sub_blocks)
        if block == 0x21 and data[position + 1:position + 2] == bytes((GIF_COMMENT_LABEL,)) and end <= len(data):
            comments.append((position, end))
        position = end
    return None, tuple(comments)


def _colour_table_size(flags: int) -> int:
    return 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0


def _skip_sub_blocks(data: bytes, position: int, counted: int) -> tuple[int, int]:
    """The offset past the sub-blocks from ``position``, and the count of sub-blocks, ``counted`` before them."""
    while position < len(data):
        counted += 1
        if counted > MAX_GIF_SUB_BLOCKS:
            raise InvalidImage(f"the GIF image has more than {MAX_GIF_SUB_BLOCKS} sub-blocks; encoders write pixel "
                               f"data in sub-blocks of 255 bytes, and each costs the decoder a step")
        size = data[position]
        position += 1 + size
        if size == 0:
            return position, counted
    return len(data) + 1, counted


def _check_jpeg_scans(data: bytes) -> tuple[tuple[int, int], ...]:
    """Refuse a file with more scans, segments or padding than any encoder writes, or of a sample precision Pillow
    does not read (``_walk_jpeg``); where the application and comment segments lie that the decoder is not shown."""
    metadata: list[tuple[int, int]] = []
    _walk_jpeg(data, metadata)
    return _jpeg_hidden(data, metadata)


def _jpeg_hidden(data: bytes, metadata: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Of the application and comment segments at ``metadata``, all but the last of each kind in JPEG_LAST_KEPT, the
    first of each in JPEG_FIRST_KEPT and every one in JPEG_ALL_KEPT; and the segment after the SOI marker only where
    a marker follows what is hidden there, since Pillow reads no JPEG whose SOI stray bytes follow."""
    kinds = JPEG_LAST_KEPT + JPEG_FIRST_KEPT + JPEG_ALL_KEPT
    found: dict[tuple[int, bytes], list[int]] = {kind: [] for kind in kinds}
    for index, (start, _) in enumerate(metadata):
        for marker, identifier in kinds:
            if data[start + 1] == marker and data.startswith(identifier, start + 4):
                found[marker, identifier].append(index)
    kept = {index for kind in JPEG_ALL_KEPT for index in found[kind]}
    kept |= {found[kind][-1] for kind in JPEG_LAST_KEPT if found[kind]}
    kept |= {found[kind][0] for kind in JPEG_FIRST_KEPT if found[kind]}
    hidden = [span for index, span in enumerate(metadata) if index not in kept]
    after_soi = 2
    for start, end in hidden:
        if start != after_soi:
            break
        after_soi = end
    if after_soi != 2 and data[after_soi:after_soi + 1] != b"\xff":
        hidden.pop(0)
    return tuple(hidden)


def _walk_jpeg(data: bytes, metadata: list[tuple[int, int]]) -> None:
    """Count the scans, the segments and the padding between them from the markers alone, and refuse a file with
    more than any encoder writes, or of a sample precision Pillow does not read; add where each whole application
    or comment segment lies to ``metadata``.

    Segments before and between scans are skipped by their length (an EXIF thumbnail's markers are not
    counted); the entropy-coded data after a scan header, and fill or stray bytes before a marker, are skipped to
    the next marker. A walk that loses its way stops, and the decoder judges the rest.
    """
    scans, segments, padding, position = 0, 0, 0, 2
    while position + 4 <= len(data):
        if data[position] != 0xFF or data[position + 1] == 0xFF:
            following = JPEG_NEXT_MARKER.search(data, position)
            if following is None:
                return
            padding += following.start(1) - 1 - position
            if padding > MAX_JPEG_PADDING_BYTES:
                raise InvalidImage(f"the JPEG image has more than {MAX_JPEG_PADDING_BYTES} fill or stray bytes "
                                   f"between its segments, which decoders skip one at a time")
            position = following.start(1) - 1
            continue
        marker = data[position + 1]
        if marker == 0xD9:
            return
        if marker in JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise InvalidImage(f"the JPEG image has more than {MAX_JPEG_SEGMENTS} segments; encoders write a few "
                               f"dozen, and each costs the decoder a step")
        if marker in JPEG_FRAME_MARKERS:
            _check_jpeg_precision(data[position + 4:position + 5])
        end = position + 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
        if (marker in JPEG_APPLICATION_MARKERS or marker == JPEG_COMMENT_MARKER) and end <= len(data):
            metadata.append((position, end))
        position = end
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise InvalidImage(f"the JPEG image has more than {MAX_JPEG_SCANS} scans; encoders write at most "
                                   f"a few dozen, and each scan costs a full decoding pass (a scan bomb)")
            following = JPEG_NEXT_MARKER.search(data, position)
            if following is None:
                return
            position = following.start(1) - 1


def _check_jpeg_precision(precision: bytes) -> None:
    """400 naming a frame's sample precision other than 8 bits (12-bit, or lossless up to 16), which Pillow does not
    read: said so, rather than that the file is unreadable."""
    if precision and precision[0] != JPEG_PRECISION:
        raise InvalidImage(f"the JPEG image has {precision[0]}-bit samples, and only 8-bit JPEGs are read; send it as "
                           f"a 16-bit PNG or TIFF, or an 8-bit JPEG")


def _check_bmp_runs(data: bytes) -> None:
    """Refuse run-length data longer than its pixels can take: 32 MB of escapes that draw nothing held a worker for
    8 s. A BMP without an info header of 40 bytes or more, or not run-length coded, is left to the decoder."""
    if len(data) < 34 or struct.unpack("<I", data[14:18])[0] < 40:
        return
    (offset,) = struct.unpack("<I", data[10:14])
    width, height, compression = struct.unpack("<ii4xI", data[18:34])  # planes and bit depth skipped
    if compression not in BMP_RLE_COMPRESSIONS:
        return
    # Each row may end with an end-of-line escape and the image with an end-of-bitmap one, 2 bytes each.
    most = BMP_RLE_BYTES_PER_PIXEL * abs(width) * abs(height) + 2 * abs(height) + 2
    if len(data) - offset > most:
        raise InvalidImage(f"the BMP image's run-length data is {len(data) - offset} bytes, more than the {most} "
                           f"that {abs(width)}x{abs(height)} pixels can take")


def _check_bmp_alpha(data: bytes) -> None:
    """400 for 16-bit pixels with an alpha mask, which the decoder ignores: their transparent pixels would be
    answered opaque."""
    if len(data) < BMP_ALPHA_MASK_AT + 4 or struct.unpack("<I", data[14:18])[0] < BMP_HEADER_WITH_ALPHA_MASK:
        return
    bits, compression = struct.unpack("<HI", data[28:34])
    (alpha_mask,) = struct.unpack("<I", data[BMP_ALPHA_MASK_AT:BMP_ALPHA_MASK_AT + 4])
    if bits == 16 and compression == BMP_BITFIELDS and alpha_mask:
        raise InvalidImage(f"the BMP image's 16-bit pixels have an alpha mask ({alpha_mask:#06x}), which the BMP "
                           f"reader ignores, answering every pixel opaque; save the image as PNG")


def _check_tiff_pieces(data: bytes, max_pixels: int) -> None:
    """From the first directory alone: 400 for more strips or tiles than MAX_TIFF_STRIPS, 413 for tiles of more than
    ``max_pixels`` pixels each.

    The decoder allocates and inflates each tile whole, whatever the image's own size: a 1x1 image in one
    16384x16384 tile, 800 kB of zlib, took 800 MB and 3 s to decode. 3 million strips of a 16x16 image took 20 s and
    900 MB. Neither is counted by the memory budget, which goes by the image's size.
    """
    entries = tiff_first_directory(data)
    for tag in (TIFF_STRIP_OFFSETS, TIFF_TILE_OFFSETS):
        count = entries[tag].count if tag in entries else 0
        if count > MAX_TIFF_STRIPS:
            raise InvalidImage(f"the TIFF image has {count} strips or tiles, more than {MAX_TIFF_STRIPS}; encoders "
                               f"write one for every few rows or every 256x256 pixels")
    width, length = (entries[tag].value if tag in entries else 1 for tag in (TIFF_TILE_WIDTH, TIFF_TILE_LENGTH))
    if width * length > max_pixels:
        raise TooManyPixels(f"the TIFF image's tiles are {width}x{length} = {width * length} pixels each, and each is "
                            f"decoded whole; the limit is {max_pixels} input pixels (MAX_INPUT_PIXELS)")


def tiff_first_directory(data: bytes | memoryview) -> dict[int, TiffEntry]:
    """Each tag of a TIFF's first directory, where the file holds it. Empty, or cut short, where the directory runs
    past the end: the decoder judges that."""
    if len(data) < 16:
        return {}
    order, big = _tiff_layout(data)
    (offset,) = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)
    return _tiff_directory(data, offset, "first")[0]


def tiff_second_directory(data: bytes | memoryview) -> dict[int, TiffEntry] | None:
    """Each tag of a TIFF's second directory, None where the first is the last (its next offset 0, back at itself,
    or past the end), read here rather than by the decoder's seek, which holds every value of the directory (two
    copies of a 20 MiB tag) outside the memory budget."""
    if len(data) < 16:
        return None
    order, big = _tiff_layout(data)
    (first,) = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)
    following = _tiff_directory(data, first, "first")[1]
    if not following or following == first or following >= len(data):
        return None
    return _tiff_directory(data, following, "second")[0]


def _tiff_layout(data: bytes | memoryview) -> tuple[str, bool]:
    """The byte order's struct prefix, and whether the file is a BigTIFF (8-byte counts and offsets)."""
    return "<" if data[:2] == b"II" else ">", data[2:4] in (b"+\x00", b"\x00+")


def _tiff_directory(data: bytes | memoryview, offset: int, which: str) -> tuple[dict[int, TiffEntry], int]:
    """The tags of the directory at ``offset`` (cut short where it runs past the end), and the next directory's
    offset (0 where the file does not hold it)."""
    order, big = _tiff_layout(data)
    count_format, entry_format, next_format = ("Q", "HHQ8s", "Q") if big else ("H", "HHI4s", "I")
    first = offset + struct.calcsize(count_format)
    if first > len(data):
        return {}, 0
    (count,) = struct.unpack_from(order + count_format, data, offset)
    if count > MAX_TIFF_ENTRIES:
        raise InvalidImage(f"the TIFF image's {which} directory has {count} entries, more than {MAX_TIFF_ENTRIES}")
    entry_bytes = struct.calcsize(order + entry_format)
    entries: dict[int, TiffEntry] = {}
    for at in range(first, min(first + count * entry_bytes, len(data) - entry_bytes + 1), entry_bytes):
        tag, kind, values, stored = struct.unpack_from(order + entry_format, data, at)
        entries.setdefault(tag, TiffEntry(kind, values, stored, at, order, big))
    after = first + count * entry_bytes
    if after + struct.calcsize(next_format) > len(data):
        return entries, 0
    return entries, struct.unpack_from(order + next_format, data, after)[0]


def _check_riff_end(data: bytes) -> None:
    """A WebP file is one RIFF chunk whose header gives its length: nothing may follow it."""
    size = struct.unpack("<I", data[4:8])[0]
    end = 8 + size + (size & 1)
    if len(data) > end:
        raise InvalidImage(f"the WEBP image has {len(data) - end} bytes after its RIFF chunk "
                           f"(another file appended to it, e.g. a polyglot); only a plain WebP is accepted")


def _walk_webp(data: bytes) -> int:
    """The bytes of the first chunk of each kind in WEBP_METADATA_CHUNKS, from a walk of the RIFF chunks that stops
    where they run past the end (the decoder judges that); 400 past MAX_WEBP_CHUNKS chunks."""
    found: dict[bytes, int] = {}
    position, chunks = 12, 0
    while position + 8 <= len(data):
        chunks += 1
        if chunks > MAX_WEBP_CHUNKS:
            raise InvalidImage(f"the WEBP image has more than {MAX_WEBP_CHUNKS} chunks; encoders write a few (and one "
                               f"a frame of an animation), and the decoder keeps a record of each")
        kind, size = struct.unpack_from("<4sI", data, position)
        if kind in WEBP_METADATA_CHUNKS:
            found.setdefault(kind, min(size, len(data) - position - 8))
        position += 8 + size + (size & 1)
    return sum(found.values())


def _tiff_metadata_bytes(data: bytes) -> int:
    """The bytes of the values the first directory holds apart from its entries (but for the ICC profile's), at most
    the file's length."""
    total = 0
    for tag, entry in tiff_first_directory(data).items():
        size = entry.count * TIFF_TYPE_BYTES.get(entry.kind, 0)
        if tag != TIFF_ICC_PROFILE and size > len(entry.stored):
            total += size
    return min(total, len(data))
