"""Seeded mutations of video files for fuzzing `extract`: byte flips, zeroed ranges, cuts, duplicated or swapped
MP4 boxes / AVI chunks, absurd header values. `mutate(data, rng)` picks one; each mutator is a pure function of
(data, rng), so a (source, seed) pair names a mutant exactly (benchmarks/fuzz_extract.py, tests/test_fuzz.py).
"""
from __future__ import annotations

import random
import struct
from typing import Callable

MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta", b"mvex", b"moof", b"traf"}
RIFF_LISTS = {b"RIFF", b"LIST"}
ABSURD = (0, 1, 7, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000)


def elements(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, length, 4cc) of every MP4 box or RIFF chunk, nested ones included; [] for other formats."""
    out: list[tuple[int, int, bytes]] = []
    if data[:4] == b"RIFF":
        _riff(data, 0, len(data), out)
    elif data[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        _mp4(data, 0, len(data), out)
    return out


def _mp4(data: bytes, start: int, end: int, out: list) -> None:
    at = start
    while at + 8 <= end and len(out) < 10_000:
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        header = 8
        if size == 1 and at + 16 <= end:
            size, header = struct.unpack(">Q", data[at + 8:at + 16])[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return
        out.append((at, size, kind))
        if kind in MP4_CONTAINERS:
            _mp4(data, at + header, at + size, out)
        at += size


def _riff(data: bytes, start: int, end: int, out: list) -> None:
    at = start
    while at + 8 <= end and len(out) < 10_000:
        kind, size = struct.unpack("<4sI", data[at:at + 8])
        total = 8 + size + (size & 1)
        if at + 8 + size > end:
            return
        out.append((at, 8 + size, kind))
        if kind in RIFF_LISTS and size >= 4:
            _riff(data, at + 12, at + 8 + size, out)
        at += total


def flip_bits(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    n = rng.choice((1, 2, 8, 64))
    for _ in range(n):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b), f"flip {n} bits"


def zero_range(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    n = min(len(b), rng.choice((4, 64, 1024, 16384)))
    at = rng.randrange(len(b) - n + 1)
    b[at:at + n] = bytes(n)
    return bytes(b), f"zero {n} bytes at {at}"


def cut(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(1, len(data))
    return data[:at], f"cut at {at} of {len(data)}"


def duplicate_element(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    found = elements(data)
    if not found:
        return flip_bits(data, rng)
    at, size, kind = rng.choice(found)
    return data[:at + size] + data[at:at + size] + data[at + size:], f"duplicate {kind!r} at {at}"


def swap_elements(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Swap two elements that follow each other inside the same parent (sizes stay consistent)."""
    found = elements(data)
    pairs = [(a, b) for a, b in zip(found, found[1:]) if a[0] + a[1] + (a[1] & 1 if data[:4] == b"RIFF" else 0) == b[0]]
    if not pairs:
        return zero_range(data, rng)
    (a, an, ak), (b, bn, bk) = rng.choice(pairs)
    return data[:a] + data[b:b + bn] + data[a:b] + data[b + bn:], f"swap {ak!r} and {bk!r} at {a}"


def absurd_value(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """An absurd 32-bit value in an element's size field or in the first fields of its body (counts, sizes,
    dimensions, durations live there); in the first 512 bytes where no element is known (Matroska)."""
    b = bytearray(data)
    found = elements(data)
    value = rng.choice(ABSURD)
    if found:
        at, size, kind = rng.choice(found)
        riff = data[:4] == b"RIFF"
        field = rng.choice([0] + list(range(8, min(size, 64) - 3, 4)))
        pos = at + (4 if riff and field == 0 else field)
        b[pos:pos + 4] = struct.pack("<I" if riff else ">I", value)
        where = f"{kind!r}+{field}"
    else:
        pos = rng.randrange(min(len(b) - 4, 512))
        b[pos:pos + 4] = struct.pack(">I", value)
        where = f"byte {pos}"
    return bytes(b), f"absurd {value:#x} at {where}"


MUTATORS: dict[str, Callable[[bytes, random.Random], tuple[bytes, str]]] = {
    "flip": flip_bits, "zero": zero_range, "cut": cut, "duplicate": duplicate_element, "swap": swap_elements,
    "absurd": absurd_value,
}


def mutate(data: bytes, seed: int) -> tuple[bytes, str]:
    """One mutant of `data`, a pure function of the seed: (bytes, a short description)."""
    rng = random.Random(seed)
    name = rng.choice(sorted(MUTATORS))
    return MUTATORS[name](data, rng)
