"""`scripts/unexport.py`: the built modules export only the per-request callbacks their
filters implement (Envoy skips an absent one without entering V8), and a filter never
loses the export of a callback it implements. That the modules still serve requests
with bodies in Envoy is shown by every other e2e test, which loads these same files."""

import importlib.util
import re
import tomllib

import pytest

from harness import ROOT
from harness.paths import BUILD

_spec = importlib.util.spec_from_file_location("unexport", ROOT / "scripts" / "unexport.py")
unexport = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(unexport)

FILTERS = sorted(p.name for p in (ROOT / "filters").iterdir() if p.name != "host")
# Always exported: Envoy needs them, or the SDK frees its contexts in them.
REQUIRED = {"proxy_on_context_create", "proxy_on_request_headers", "proxy_on_delete"}


def declared(crate_dir) -> set[str]:
    return unexport.manifest_names(crate_dir / "Cargo.toml")


def glue_sources(filter_name: str):
    """The Rust that can answer a callback of this module: its own glue, the shared
    glue, and for the combined module the filters it runs as stages."""
    crates = FILTERS + ["host"] if filter_name == "combined" else [filter_name, "host"]
    for crate in crates:
        yield from (ROOT / "filters" / crate / "src").rglob("*.rs")


@pytest.mark.parametrize("filter_name", FILTERS)
def test_a_filter_implements_no_callback_it_unexports(filter_name):
    names = declared(ROOT / "filters" / filter_name)
    assert names, f"{filter_name}: no [package.metadata.wasmgate] unexported list"
    for source in glue_sources(filter_name):
        text = source.read_text()
        for name in names:
            method = unexport.REMOVABLE[name]
            assert not re.search(rf"\bfn\s+{method}\s*\(", text), (
                f"{source.relative_to(ROOT)} implements {method}, but "
                f"filters/{filter_name}/Cargo.toml still removes {name}"
            )


def test_the_floor_implements_no_callback_it_unexports():
    names = declared(ROOT / "bench" / "trivial")
    text = (ROOT / "bench" / "trivial" / "src" / "lib.rs").read_text()
    for name in names:
        assert not re.search(rf"\bfn\s+{unexport.REMOVABLE[name]}\s*\(", text)


@pytest.mark.parametrize("filter_name", FILTERS)
def test_the_built_module_lacks_exactly_the_unexported_callbacks(filter_name):
    exported = set(unexport.export_names((BUILD / "wasm" / f"{filter_name}.wasm").read_bytes()))
    removed = declared(ROOT / "filters" / filter_name)
    assert not exported & removed, "make wasm did not run scripts/unexport.py"
    assert REQUIRED <= exported
    # Whatever the filter keeps of the removable ones is still there.
    assert set(unexport.REMOVABLE) - removed <= exported


# The smallest module the script meets: a type, two functions, and an export section
# naming them both plus the memory (hand-assembled WebAssembly 1.0).
TYPE = bytes([1, 4, 1, 0x60, 0, 0])
FUNCS = bytes([3, 3, 2, 0, 0])
MEMORY = bytes([5, 3, 1, 0, 1])
CODE = bytes([10, 7, 2, 2, 0, 0x0B, 2, 0, 0x0B])


def export_section(names_kinds) -> bytes:
    body = bytearray(unexport.leb_u32(len(names_kinds)))
    for name, kind, index in names_kinds:
        body += unexport.leb_u32(len(name)) + name.encode() + bytes([kind]) + unexport.leb_u32(index)
    return bytes([7]) + unexport.leb_u32(len(body)) + bytes(body)


def module(exports) -> bytes:
    return unexport.MAGIC + TYPE + FUNCS + MEMORY + export_section(exports) + CODE


SAMPLE = [("proxy_on_log", 0, 0), ("memory", 2, 0), ("proxy_on_request_headers", 0, 1)]


def test_removes_only_the_named_export_and_keeps_every_other_byte():
    out = unexport.unexport(module(SAMPLE), {"proxy_on_log"})
    assert out == module(SAMPLE[1:])
    assert unexport.export_names(out) == ["memory", "proxy_on_request_headers"]


def test_refuses_a_callback_that_is_not_removable():
    with pytest.raises(unexport.WasmError, match="not a removable callback: proxy_on_request_headers"):
        unexport.unexport(module(SAMPLE), {"proxy_on_request_headers"})
    with pytest.raises(unexport.WasmError, match="proxy_on_delete"):
        unexport.unexport(module(SAMPLE), {"proxy_on_delete"})


def test_refuses_a_name_the_module_does_not_export():
    with pytest.raises(unexport.WasmError, match="does not export proxy_on_response_body"):
        unexport.unexport(module(SAMPLE), {"proxy_on_log", "proxy_on_response_body"})


def test_refuses_what_is_not_a_module():
    with pytest.raises(unexport.WasmError, match="not a WebAssembly"):
        unexport.unexport(b"\x7fELF" + bytes(20), {"proxy_on_log"})
    with pytest.raises(unexport.WasmError, match="past the end"):
        unexport.unexport(module(SAMPLE)[:-3], {"proxy_on_log"})


def test_the_command_rewrites_in_place_from_the_manifest(tmp_path, capsys):
    wasm = tmp_path / "f.wasm"
    wasm.write_bytes(module(SAMPLE))
    manifest = tmp_path / "Cargo.toml"
    manifest.write_text('[package]\nname = "f"\n[package.metadata.wasmgate]\nunexported = ["proxy_on_log"]\n')
    assert unexport.main(["--manifest", str(manifest), str(wasm)]) == 0
    assert unexport.export_names(wasm.read_bytes()) == ["memory", "proxy_on_request_headers"]
    # Run again on the rewritten module, the name is gone: an error, the file untouched.
    assert unexport.main(["--manifest", str(manifest), str(wasm)]) == 1
    assert "does not export proxy_on_log" in capsys.readouterr().err
    assert unexport.export_names(wasm.read_bytes()) == ["memory", "proxy_on_request_headers"]


def test_every_filter_manifest_parses():
    for crate in [ROOT / "filters" / f for f in FILTERS] + [ROOT / "bench" / "trivial"]:
        with (crate / "Cargo.toml").open("rb") as f:
            tomllib.load(f)
