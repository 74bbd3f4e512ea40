#!/usr/bin/env python3
"""Remove the exports of proxy-wasm callbacks a filter does not implement.

Envoy's proxy-wasm host (proxy-wasm-cpp-host, `ContextBase::onResponseBody`, `onLog`,
...) checks whether the module exports a callback and, when it does not, answers
"continue" without entering the VM. The Rust SDK (proxy-wasm 0.2) exports every
`proxy_on_*` callback from its dispatcher, whose default answer is that same
"continue", so each request of each filter paid a VM crossing for callbacks it never
implements (for a GET: `proxy_on_response_headers`, `proxy_on_response_body`,
`proxy_on_log`). The SDK offers no way to export fewer, so `make wasm` runs this on
each built module.

Each filter crate names what to remove in its Cargo.toml:

    [package.metadata.wasmgate]
    unexported = ["proxy_on_response_body", "proxy_on_log"]

Only the per-request callbacks in REMOVABLE may be named: they are the ones the host
skips when absent, and whose SDK default is "continue", "done" or nothing at all.
`proxy_on_done` may go when no context implements `on_done` (the host then takes a
context as done, which is the SDK's default answer; a filter cleans up in `Drop`
instead); `proxy_on_delete` frees the SDK's contexts and is never removed.
A name the module does not export is an error (an SDK rename must not go unnoticed).
Only the export section changes: the functions stay in the code, unreferenced.

Usage: unexport.py --manifest filters/headers/Cargo.toml build/wasm/headers.wasm
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

MAGIC = b"\0asm\x01\0\0\0"
EXPORT_SECTION = 7

# Export name -> the SDK trait method that answers it (for the check that a filter
# does not implement a callback it removes: tests/e2e/test_unexport.py).
REMOVABLE = {
    "proxy_on_request_body": "on_http_request_body",
    "proxy_on_request_trailers": "on_http_request_trailers",
    "proxy_on_response_headers": "on_http_response_headers",
    "proxy_on_response_body": "on_http_response_body",
    "proxy_on_response_trailers": "on_http_response_trailers",
    "proxy_on_log": "on_log",
    "proxy_on_done": "on_done",
}


class WasmError(ValueError):
    """The input is not a module this script can rewrite, or a name is wrong."""


def read_leb_u32(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 number at `pos`: (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise WasmError("truncated LEB128 number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 28:
            raise WasmError("LEB128 number longer than a u32")
    return value, pos


def leb_u32(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sections(module: bytes) -> list[tuple[int, bytes]]:
    """The module's sections in order, as (id, content)."""
    if module[:8] != MAGIC:
        raise WasmError("not a WebAssembly 1.0 binary module")
    pos, found = 8, []
    while pos < len(module):
        section_id = module[pos]
        size, start = read_leb_u32(module, pos + 1)
        end = start + size
        if end > len(module):
            raise WasmError(f"section {section_id} runs past the end of the module")
        found.append((section_id, module[start:end]))
        pos = end
    return found


def exports(content: bytes) -> list[tuple[str, bytes]]:
    """The export section's entries as (name, encoded entry)."""
    count, pos = read_leb_u32(content, 0)
    entries = []
    for _ in range(count):
        start = pos
        length, pos = read_leb_u32(content, pos)
        name = content[pos : pos + length].decode("utf-8")
        pos += length + 1  # the kind byte
        _, pos = read_leb_u32(content, pos)  # the index
        entries.append((name, content[start:pos]))
    if pos != len(content):
        raise WasmError("trailing bytes after the export section's entries")
    return entries


def export_names(module: bytes) -> list[str]:
    return [name for sid, body in sections(module) if sid == EXPORT_SECTION for name, _ in exports(body)]


def unexport(module: bytes, names: set[str]) -> bytes:
    """`module` without the exports `names` (each must be in REMOVABLE and exported)."""
    unknown = sorted(names - REMOVABLE.keys())
    if unknown:
        raise WasmError(f"not a removable callback: {', '.join(unknown)}")
    out = bytearray(MAGIC)
    seen: set[str] = set()
    for section_id, content in sections(module):
        if section_id == EXPORT_SECTION:
            entries = exports(content)
            seen = {name for name, _ in entries}
            kept = [entry for name, entry in entries if name not in names]
            content = leb_u32(len(kept)) + b"".join(kept)
        out += bytes([section_id]) + leb_u32(len(content)) + content
    missing = sorted(names - seen)
    if missing:
        raise WasmError(f"the module does not export {', '.join(missing)}")
    return bytes(out)


def manifest_names(manifest: Path) -> set[str]:
    """The callbacks a crate's Cargo.toml declares unexported (none when it declares none)."""
    with manifest.open("rb") as f:
        package = tomllib.load(f).get("package", {})
    names = package.get("metadata", {}).get("wasmgate", {}).get("unexported", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WasmError(f"{manifest}: package.metadata.wasmgate.unexported must be a list of names")
    return set(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True, help="the filter crate's Cargo.toml")
    parser.add_argument("wasm", type=Path, help="the module, rewritten in place")
    args = parser.parse_args(argv)
    try:
        names = manifest_names(args.manifest)
        if names:
            args.wasm.write_bytes(unexport(args.wasm.read_bytes(), names))
    except (WasmError, OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        print(f"unexport: {args.wasm}: {e}", file=sys.stderr)
        return 1
    print(f"unexport: {args.wasm}: removed {', '.join(sorted(names)) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
