#!/usr/bin/env python3
"""Writes the binary seeds of the request and tier_header targets (the
input layout is documented in src/bin/request.rs; the header layout in
src/tier/header.rs). Run from this folder; the output is committed."""
import json
import struct
import zlib

SPOT0 = 0  # index into SPOTS
KINDS = {"in": 0, "out": 1, "flush": 2, "get_id": 3, "discard": 4, "write_zeroes": 5}
EDGE_LENS = [0, 1, 2, 8, 15, 16, 17, 20, 21, 31, 32, 48, 511, 512, 513, 528, 1024, 4096]
DATA, STATUS = 0x2_0000, 0x3_0000


def edge(i):
    return bytes([4 * i])


def desc_spot(length, writable):
    return bytes([0, SPOT0]) + edge(EDGE_LENS.index(length)) + bytes([writable])


def desc_at(addr, length, writable):
    return bytes([2]) + struct.pack("<I", addr) + edge(EDGE_LENS.index(length)) + bytes([writable])


def request(kind, descs, segments=(), virtqueue=False, indirect=False):
    flags = 0b100 | virtqueue | indirect << 1
    b = bytes([flags]) + edge(0)  # capacity 1 MiB
    for _ in range(4):
        b += edge(KINDS[kind]) + bytes(4) + edge(0)  # type, reserved, sector 0
    b += bytes([len(segments)])
    for sectors, flags in segments:
        b += edge(0) + edge([0, 1, 8, 64, 5000].index(sectors)) + bytes([flags])
    b += bytes([0, len(descs)]) + b"".join(descs)
    if virtqueue:
        b += bytes([0])
    return b


status = desc_at(STATUS, 1, 1)
seeds = {
    "read": request("in", [desc_spot(16, 0), desc_at(DATA, 512, 1), status]),
    "write": request("out", [desc_spot(16, 0), desc_at(DATA, 4096, 0), status]),
    "flush": request("flush", [desc_spot(16, 0), status]),
    "get-id": request("get_id", [desc_spot(16, 0), desc_at(DATA, 20, 1), status]),
    "discard": request("discard", [desc_spot(48, 0), status], [(8, 0), (1, 0)]),
    "write-zeroes": request("write_zeroes", [desc_spot(32, 0), status], [(8, 1)]),
}
for name, b in list(seeds.items()):
    body = b[1:]
    seeds[name + "-virtqueue"] = bytes([b[0] | 1]) + body + bytes([0])
    seeds[name + "-indirect"] = bytes([b[0] | 3]) + body + bytes([0])
for name, b in seeds.items():
    open(f"request/{name}", "wb").write(b)

body = json.dumps(
    {"uuid": "5b1e4a0e-8d1f-4c47-9a55-2f1d3c4b5a69", "tier_name": "nvme",
     "unit_bytes": 65536, "capacity": 1 << 30},
    separators=(",", ":"),
).encode()
head = b"TIERBLK\0" + struct.pack("<III", 1, len(body), zlib.crc32(body))
open("tier_header/valid", "wb").write(head + body)
open("tier_header/empty", "wb").write(bytes(64))
