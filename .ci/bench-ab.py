#!/usr/bin/env python3
"""Compares sections of a `bench-cuda profile` log, as the device calls print them.

A section starts at a line `== NAME`; its rows are the bench's table rows (M, KxN, bits, ours µs,
cuBLAS µs, speedup, floor µs, % of floor, bf16 µs, ...). Usage:

    .ci/bench-ab.py LOG                      # list the sections
    .ci/bench-ab.py LOG "A" "B" ["C" "D"...]  # B against A (then D against C...), row by row
"""
import collections
import re
import sys

ROW = re.compile(r"\s+(\d+)\s+(\d+x\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)\s+(\d+)%\s+(\S+)")


def sections(path):
    data, name = collections.OrderedDict(), None
    for line in open(path, encoding="utf-8", errors="replace"):
        head = re.match(r"== (.*)", line)
        if head:
            name = head.group(1).strip()
            data.setdefault(name, {})
            continue
        row = ROW.match(line)
        if row and name is not None:
            m, shape, bits, ours, _cublas, speedup, _floor, pct, bf16 = row.groups()
            data[name][(shape, int(m), bits)] = (float(ours), float(speedup), int(pct), bf16)
    return data


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    data = sections(sys.argv[1])
    pairs = sys.argv[2:]
    if not pairs:
        print("\n".join(data))
        return
    if len(pairs) % 2:
        sys.exit("sections come in pairs: base, then the variant")
    for a, b in zip(pairs[::2], pairs[1::2]):
        for name in (a, b):
            if name not in data:
                sys.exit(f"no section {name!r}; the log has: {', '.join(data)}")
        print(f"\n{b}  against  {a}")
        for key, (t0, s0, p0, bf0) in data[a].items():
            if key not in data[b]:
                continue
            t1, s1, p1, bf1 = data[b][key]
            shape, m, bits = key
            print(f"{shape:>12} M={m:<4} {bits}b  {t0:7.1f} -> {t1:7.1f} us ({t1 / t0:.3f})  "
                  f"{s0:.2f}x -> {s1:.2f}x  floor {p0}% -> {p1}%  bf16 {bf0} -> {bf1}")


if __name__ == "__main__":
    main()
