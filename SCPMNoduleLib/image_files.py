"""What is wrong with an image file that does not read, and ITK's own messages in our log.

ITK's readers say little when a file is damaged: a MetaImage whose ``.raw`` file is missing or
truncated fails with "No such file or directory" (and MetaIO prints its own lines on stderr), a
truncated NIfTI is read *without an error*, its missing voxels filled with whatever was in
memory. So before a file is given to ITK, :func:`data_problem` compares the voxel data a header
promises with the bytes there are (MetaImage ``.mhd``/``.mha``, NRRD ``.nrrd``/``.nhdr``,
NIfTI-1 ``.nii``/``.nii.gz``), and :func:`itk_problem` turns the ITK exceptions we know into a
clause. :func:`itk_output_captured` keeps what ITK, MetaIO, NIfTI and GDCM print on the
process's stderr out of the user's terminal, for the caller to log.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

__all__ = ["data_problem", "itk_output_captured", "itk_problem"]

_META_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
                    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
                    "MET_FLOAT": 4, "MET_DOUBLE": 8}
_NRRD_TYPE_BYTES = {**dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8",
                                     "uint8_t"), 1),
                    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16",
                                     "int16_t", "ushort", "unsigned short", "unsigned short int", "uint16",
                                     "uint16_t"), 2),
                    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int",
                                     "uint32", "uint32_t", "float"), 4),
                    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long",
                                     "signed long long int", "int64", "int64_t", "ulonglong",
                                     "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                                     "double"), 8)}
_HEADER_LIMIT = 1 << 16
"""Bytes of a file searched for its header (headers are a few hundred bytes)."""


def _plural_bytes(count: int) -> str:
    return f"{count} byte{'s' if count != 1 else ''}"


def _short_data(data: Path, have: int, want: int) -> str | None:
    if not data.is_file():
        return f"its voxel data file {data.name} is missing"
    if have < want:
        return f"its voxel data is truncated ({_plural_bytes(have)} of the {_plural_bytes(want)} its header promises)"
    return None


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_HEADER_LIMIT)


def _header_fields(text: str, separator: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(separator)
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def _meta_problem(path: Path) -> str | None:
    """MetaImage: ``DimSize``, ``ElementType``, ``ElementNumberOfChannels`` and where the data is."""
    head = _head(path)
    end = re.search(rb"ElementDataFile\s*=\s*([^\r\n]*)\r?\n?", head)
    if end is None:
        return None
    fields = _header_fields(head[: end.start()].decode("latin-1"), "=")
    name = end.group(1).decode("latin-1").strip()
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        element = _META_TYPE_BYTES[fields["elementtype"].upper()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except (KeyError, ValueError):
        return None
    if fields.get("compresseddata", "false").lower() == "true" or name.upper() == "LIST" or "%" in name:
        return None  # compressed or one file per slice: ITK's own check is all there is
    want = math.prod(dims) * element * channels
    if name.upper() == "LOCAL":
        return _short_data(path, path.stat().st_size - end.end(), want)
    data = path.parent / name
    return _short_data(data, data.stat().st_size if data.is_file() else 0, want)


def _nrrd_problem(path: Path) -> str | None:
    """NRRD: ``sizes``, ``type``, raw ``encoding`` and where the data is (``data file``)."""
    head = _head(path)
    blank = re.search(rb"\r?\n\r?\n", head)
    text = (head[: blank.start()] if blank else head).decode("latin-1")
    fields = _header_fields(text, ":")
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
        element = _NRRD_TYPE_BYTES[fields["type"].lower()]
    except (KeyError, ValueError):
        return None
    if fields.get("encoding", "raw").lower() != "raw" or fields.get("byte skip", "0") != "0":
        return None
    want = math.prod(sizes) * element
    name = fields.get("data file", fields.get("datafile"))
    if name is None:
        return None if blank is None else _short_data(path, path.stat().st_size - blank.end(), want)
    if " " in name or name.upper().startswith("LIST"):
        return None
    data = path.parent / name
    return _short_data(data, data.stat().st_size if data.is_file() else 0, want)


def _nifti_problem(path: Path) -> str | None:
    """NIfTI-1 (``.nii``, ``.nii.gz``): ``vox_offset`` + the voxels of ``dim`` at ``bitpix`` bits."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            header = handle.read(348)
            for order in "<>":
                if len(header) == 348 and struct.unpack(order + "i", header[:4])[0] == 348:
                    break
            else:
                return None  # NIfTI-2 or not NIfTI: ITK's own check is all there is
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            if not 1 <= dims[0] <= 7 or bitpix <= 0 or min(dims[1: dims[0] + 1]) < 0:
                return None
            want = max(offset, 348) + math.prod(dims[1: dims[0] + 1]) * bitpix // 8
            if not compressed:
                have = path.stat().st_size
            else:
                have = 348
                while block := handle.read(1 << 22):
                    have += len(block)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return "its compressed data ends early or is damaged (the file is truncated)"
    return _short_data(path, have, want)


def data_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the voxel data of an image file, as a clause, or ``None`` when its header
    and bytes agree (or the format is not one checked here). Reads the whole file only for
    ``.nii.gz`` (the uncompressed size is not stored)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".mhd", ".mha")):
        return _meta_problem(path)
    if name.endswith((".nrrd", ".nhdr")):
        return _nrrd_problem(path)
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_problem(path)
    return None


def itk_problem(message: str) -> str | None:
    """The clause for an ITK exception we recognise (zero spacing, a singular direction), else ``None``."""
    if "Zero-valued spacing" in message:
        spacing = re.search(r"to (\[[^\]]*\])", message)
        return f"a voxel spacing is zero{f' ({spacing.group(1)} mm)' if spacing else ''}"
    if "determinant is 0" in message:
        return "its direction matrix is singular (determinant 0), so voxels have no place in space"
    return None


@contextlib.contextmanager
def itk_output_captured() -> Iterator[list[str]]:
    """Collect what is printed on the process's stderr (file descriptor 2) during the block.

    ITK's output window, MetaIO, NIfTI and GDCM write there directly, past Python; the lines
    are appended to the yielded list when the block ends (also by an exception), for the caller
    to log. Where stderr cannot be redirected, nothing is collected.
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield lines
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())
