#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmgate_fuzz::jwt::host_verifier(data));
