#!/usr/bin/env python3
"""Prints qemu-io commands that fill a disk of SIZE bytes with a reproducible mix of runs:
~50 % random data (from PATTERN_FILE), ~20 % zero runs written as data, the rest left
unallocated. Runs are 64 KiB-aligned, 256 KiB to 8 MiB long.

usage: gen-layout.py SIZE PATTERN_FILE > commands
"""
import random
import sys

size = int(sys.argv[1])
pattern = sys.argv[2]
rng = random.Random(20240611)
unit = 64 << 10
pos = 0
counts = {"data": 0, "zero": 0, "hole": 0}
while pos < size:
    length = min(rng.randint(4, 128) * unit, size - pos)
    kind = rng.choices(["data", "zero", "hole"], weights=[50, 20, 30])[0]
    if kind == "data":
        print(f"write -q -s {pattern} {pos} {length}")
    elif kind == "zero":
        print(f"write -q -P 0 {pos} {length}")
    counts[kind] += length
    pos += length
sys.stderr.write(
    "layout: " + ", ".join(f"{k} {v * 100 / size:.1f}%" for k, v in counts.items()) + "\n"
)
