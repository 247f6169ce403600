#!/usr/bin/env python3
"""Builds the seed corpus of the libFuzzer targets (standard library only).

    python3 tests/fuzz/libfuzzer/seeds.py        # from the repository root

writes tests/fuzz/libfuzzer/corpus/<target>/ (not committed) from:
- proto/vectors/*.json: every client vector's MessagePack bytes (valid and
  invalid) for native_decode; every Yjs payload in them (`{"$bin": ...}`
  values: updates, state vectors, diffs) for yrs_update, wrapped in
  y-protocols sync messages for yjs_frame;
- the y-protocols frames recorded from the real yjs packages
  (tests/interop/record.mjs, kept as hex consts in tests/it/yjs.rs) for
  yjs_frame, their payloads for yrs_update;
- regressions/<target>/ (committed): inputs that once failed a target.
Files are named by content hash, so running it twice adds nothing.
"""

import hashlib
import json
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TARGETS = ("native_decode", "yjs_frame", "yrs_update")


def var_uint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def sync(kind, payload):
    """A y-protocols sync message: step 1 (0), step 2 (1) or update (2)."""
    return var_uint(0) + var_uint(kind) + var_uint(len(payload)) + payload


def bins(value):
    """Every `{"$bin": hex}` inside a vector's decoded value."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            yield bytes.fromhex(value["$bin"])
            return
        for v in value.values():
            yield from bins(v)
    elif isinstance(value, list):
        for v in value:
            yield from bins(v)


def main():
    seeds = {t: set() for t in TARGETS}
    for path in sorted((ROOT / "proto" / "vectors").glob("*.json")):
        vector = json.loads(path.read_text())
        if vector["direction"] == "client":
            seeds["native_decode"].add(bytes.fromhex(vector["hex"]))
        for payload in bins(vector.get("value")):
            seeds["yrs_update"].add(payload)
            for kind in (0, 1, 2):
                seeds["yjs_frame"].add(sync(kind, payload))

    recorded = (ROOT / "tests" / "it" / "yjs.rs").read_text()
    frames = [bytes.fromhex(h) for h in re.findall(r'const [A-Z0-9_]+: &str = "([0-9a-f]+)";', recorded)]
    for frame in frames:
        seeds["yjs_frame"].add(frame)
        # A sync message's payload: type 0, sub-type, length, payload.
        if len(frame) > 3 and frame[0] == 0 and frame[1] in (0, 1, 2) and frame[2] == len(frame) - 3:
            seeds["yrs_update"].add(frame[3:])
    # Several messages in one frame, as a client sends them on connect.
    seeds["yjs_frame"].add(b"".join(frames))

    for target in TARGETS:
        regressions = HERE / "regressions" / target
        if regressions.is_dir():
            seeds[target].update(p.read_bytes() for p in regressions.iterdir() if p.is_file())
        out = HERE / "corpus" / target
        out.mkdir(parents=True, exist_ok=True)
        for seed in seeds[target]:
            (out / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        print(f"{target}: {len(seeds[target])} seeds in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
