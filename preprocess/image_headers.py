"""The pixel size an image file declares in its header, read without decoding any pixel.

A decompression bomb is a small file that declares a huge image (a 24000x24000 PNG of zeros is
70 KB); reading the size first lets `load_image` refuse it before OpenCV allocates anything.
`declared_size` knows every format this project's OpenCV decodes: PNG, JPEG, BMP, GIF, WebP,
TIFF (and BigTIFF), JPEG 2000 (JP2 and raw codestreams), the Netpbm family (PBM, PGM, PPM, PAM,
PFM), Sun raster, Radiance HDR and AVIF.
"""
import re
import struct

# Netpbm and Radiance headers are text; a header longer than this is not one.
TEXT_HEADER_BYTES = 65536
# JPEG start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
TIFF_SIZE_TAGS = {256: "width", 257: "height"}
# TIFF field types: SHORT, LONG, LONG8.
TIFF_INTEGER_FORMATS = {3: "H", 4: "I", 16: "Q"}
AVIF_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0}  # box type -> bytes before its children


def declared_size(data):
    """(height, width) that the image in `data` (the file's bytes) declares, or None when the
    format is not one of the above or its header cannot be read.

    For formats with several images (TIFF pages, AVIF items) this is the size of the image
    OpenCV decodes, or the largest one declared.
    """
    for signature, reader in _READERS:
        if data.startswith(signature):
            try:
                size = reader(data)
            except (struct.error, ValueError, IndexError):
                return None
            return None if size is None else (int(size[0]), int(size[1]))
    return None


def _png(data):
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _jpeg(data):
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
        elif marker in (0xD9, 0xDA):  # the image ends or its data begins: no frame header
            return None
        elif marker in JPEG_FRAME_MARKERS:
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return height, width
        else:
            position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    return None


def _bmp(data):
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(height), abs(width)  # a negative height means rows stored top-down


def _gif(data):
    width, height = struct.unpack("<HH", data[6:10])
    return height, width


def _webp(data):
    if data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return height, width
    return None


def _tiff(data):
    """The size of the first image file directory, the page OpenCV decodes."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    if big:
        offset = struct.unpack(order + "Q", data[8:16])[0]
        count = struct.unpack(order + "Q", data[offset:offset + 8])[0]
        first, entry_size, value_at = offset + 8, 20, 12
    else:
        offset = struct.unpack(order + "I", data[4:8])[0]
        count = struct.unpack(order + "H", data[offset:offset + 2])[0]
        first, entry_size, value_at = offset + 2, 12, 8
    size = {}
    for entry in range(first, first + entry_size * min(count, 4096), entry_size):
        tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
        if tag in TIFF_SIZE_TAGS and kind in TIFF_INTEGER_FORMATS:
            value_format = order + TIFF_INTEGER_FORMATS[kind]
            start = entry + value_at
            size[TIFF_SIZE_TAGS[tag]] = struct.unpack(
                value_format, data[start:start + struct.calcsize(value_format)])[0]
    return (size["height"], size["width"]) if len(size) == 2 else None


def _jpeg2000_box(data):
    """A JP2 file: the image header box (ihdr) inside the header box (jp2h)."""
    for box, start, end in _boxes(data, 0, len(data)):
        if box == b"jp2h":
            for inner, inner_start, _ in _boxes(data, start, end):
                if inner == b"ihdr":
                    return struct.unpack(">II", data[inner_start:inner_start + 8])
    return None


def _jpeg2000_codestream(data):
    """A raw codestream: the image size marker (SIZ) right after the start of codestream."""
    width, height, x_offset, y_offset = struct.unpack(">IIII", data[8:24])
    return height - y_offset, width - x_offset


def _netpbm(data):
    header = data[:TEXT_HEADER_BYTES].decode("latin-1")
    if header.startswith("P7"):
        fields = dict(re.findall(r"^(WIDTH|HEIGHT)\s+(\d+)", header, re.MULTILINE))
        return int(fields["HEIGHT"]), int(fields["WIDTH"])
    tokens = re.sub(r"#[^\n]*", " ", header[2:]).split()
    return int(tokens[1]), int(tokens[0])


def _sun_raster(data):
    width, height = struct.unpack(">II", data[4:12])
    return height, width


def _radiance(data):
    """The resolution line after the blank line that ends the header, e.g. '-Y 480 +X 640'."""
    header = data[:TEXT_HEADER_BYTES].decode("latin-1")
    match = re.search(r"\n\n([-+][XY]) (\d+) ([-+][XY]) (\d+)", header)
    if match is None:
        return None
    first, second = int(match.group(2)), int(match.group(4))
    return (first, second) if match.group(1).endswith("Y") else (second, first)


def _avif(data):
    """The largest image spatial extent property (ispe) of an AVIF (ISO base media) file."""
    if data[4:8] != b"ftyp" or data[8:12] not in (b"avif", b"avis"):
        return None
    sizes = []
    pending = [(0, len(data))]
    while pending:
        start, end = pending.pop()
        for box, box_start, box_end in _boxes(data, start, end):
            if box in AVIF_CONTAINERS:
                pending.append((box_start + AVIF_CONTAINERS[box], box_end))
            elif box == b"ispe":
                width, height = struct.unpack(">II", data[box_start + 4:box_start + 12])
                sizes.append((height, width))
    return max(sizes, key=lambda size: size[0] * size[1]) if sizes else None


def _boxes(data, start, end):
    """(type, content start, content end) of the ISO base media / JP2 boxes in data[start:end]."""
    position = start
    while position + 8 <= end:
        length, box = struct.unpack(">I4s", data[position:position + 8])
        header = 8
        if length == 1:
            length, header = struct.unpack(">Q", data[position + 8:position + 16])[0], 16
        elif length == 0:
            length = end - position
        if length < header:
            raise ValueError("a box shorter than its header")
        yield box, position + header, min(position + length, end)
        position += length


_READERS = (
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"\xff\xd8", _jpeg),
    (b"BM", _bmp),
    (b"GIF87a", _gif),
    (b"GIF89a", _gif),
    (b"RIFF", _webp),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    (b"II+\x00", _tiff),
    (b"MM\x00+", _tiff),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", _jpeg2000_box),
    (b"\xff\x4f\xff\x51", _jpeg2000_codestream),
    *((b"P" + kind, _netpbm) for kind in (b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"F",
                                          b"f")),
    (b"\x59\xa6\x6a\x95", _sun_raster),
    (b"#?RADIANCE", _radiance),
    (b"#?RGBE", _radiance),
    (b"\x00\x00\x00", _avif),  # ISO base media: a 4-byte box length, then 'ftyp'
)
