//! A request's headers read from Envoy in one host call, and kept in step with the
//! edits made through it.
//!
//! Why: a host call that returns data makes the host call back into the VM to
//! allocate the copy, and that crossing is what costs (measured in V8, BENCHMARKS.md
//! "Findings": about 0.65 µs to read one present header, 0.15 µs for an absent one or
//! for a write, 1.05 µs for every header at once). A filter that reads two present
//! headers, or one and a handful of absent ones, is cheaper with the snapshot. The
//! headers stay in the one buffer the host wrote them to and are looked up in place
//! (the SDK's `get_map_bytes` would make two allocations per header, which cost about
//! as much again). Edits go to Envoy at once and are remembered here, so whatever reads
//! the snapshot later (a later stage of the combined module) sees what Envoy holds.
//!
//! It is not a general header map: it holds one request's headers, answers the first
//! value of a name, and is read at most once.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};
use std::cell::OnceCell;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
extern "C" {
    // The proxy-wasm ABI's call behind the SDK's `get_map_bytes`, declared here to keep
    // the host's buffer as it is (see the module's doc).
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// The request headers of the effective context; read on first use.
#[derive(Debug)]
pub struct HeaderSnapshot {
    map: MapType,
    /// The host's serialized pairs (proxy-wasm ABI: a count, the sizes, then each key
    /// and value followed by a NUL).
    read: OnceCell<Vec<u8>>,
    /// Names whose values as read are gone (removed or replaced).
    removed: Vec<String>,
    /// Values added since, in order (after every value as read, as in Envoy's map).
    added: Vec<(String, String)>,
}

impl Default for HeaderSnapshot {
    fn default() -> Self {
        Self::request()
    }
}

impl HeaderSnapshot {
    /// The request headers, read from Envoy on the first lookup.
    pub fn request() -> Self {
        Self {
            map: MapType::HttpRequestHeaders,
            read: OnceCell::new(),
            removed: Vec::new(),
            added: Vec::new(),
        }
    }

    fn buffer(&self) -> &[u8] {
        self.read.get_or_init(|| read_pairs(self.map))
    }

    /// The first value of `name` (lower-case) as read, if any, in bytes.
    fn read_value(&self, name: &str) -> Option<&[u8]> {
        if self.removed.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return None;
        }
        Pairs::new(self.buffer())
            .find(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    fn added_value(&self, name: &str) -> Option<&str> {
        self.added
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The first value of `name` (lower-case), if present and UTF-8. A value that is
    /// not UTF-8 reads as absent, as with [`crate::request_header`]: nothing built on
    /// it could be trusted, and the SDK's text reads would trap the VM.
    pub fn get(&self, name: &str) -> Option<&str> {
        match self.read_value(name) {
            Some(value) => std::str::from_utf8(value).ok(),
            None => self.added_value(name),
        }
    }

    /// [`get`](Self::get) as an owned string, for views that hand values out.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    /// Whether the request has `name` at all, whatever its bytes.
    pub fn contains(&self, name: &str) -> bool {
        self.read_value(name).is_some() || self.added_value(name).is_some()
    }

    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), Status> {
        hostcalls::set_map_value(self.map, name, Some(value))?;
        self.forget(name);
        self.added.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Adds one more value of `name`, keeping the others.
    pub fn add(&mut self, name: &str, value: &str) -> Result<(), Status> {
        hostcalls::add_map_value(self.map, name, value)?;
        self.added.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Removes every value of `name`. When the snapshot has been read and has no such
    /// header, nothing is sent to Envoy (removing an absent header is a host call for
    /// nothing); an unread snapshot is not read for this.
    pub fn remove(&mut self, name: &str) -> Result<(), Status> {
        if self.read.get().is_some() && !self.contains(name) {
            return Ok(());
        }
        hostcalls::remove_map_value(self.map, name)?;
        self.forget(name);
        Ok(())
    }

    fn forget(&mut self, name: &str) {
        if !self.removed.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            self.removed.push(name.to_owned());
        }
        self.added
            .retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }
}

/// The host's serialized header pairs of `map`; empty when it has none or refuses.
#[cfg(target_arch = "wasm32")]
fn read_pairs(map: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated through this
    // module's `proxy_on_memory_allocate` (a boxed byte slice of exactly `size`), or
    // leaves the pointer null. Ownership passes to us, as in the SDK's `get_map_bytes`.
    unsafe {
        if proxy_get_header_map_pairs(map as u32, &mut data, &mut size) != 0 || data.is_null() {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    }
}

/// Natively (the unit tests) there is no host to ask.
#[cfg(not(target_arch = "wasm32"))]
fn read_pairs(_map: MapType) -> Vec<u8> {
    Vec::new()
}

/// The (key, value) pairs of a serialized map, in order; stops at the first
/// inconsistency rather than reading past the buffer.
struct Pairs<'a> {
    buffer: &'a [u8],
    count: usize,
    next: usize,
    /// Where the next key's bytes start.
    data: usize,
}

impl<'a> Pairs<'a> {
    fn new(buffer: &'a [u8]) -> Self {
        let count = read_u32(buffer, 0).unwrap_or(0);
        Self {
            buffer,
            count,
            next: 0,
            data: count.saturating_mul(8).saturating_add(4),
        }
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let sizes = 4 + self.next * 8;
        let key_len = read_u32(self.buffer, sizes)?;
        let value_len = read_u32(self.buffer, sizes + 4)?;
        let key_end = self.data.checked_add(key_len)?;
        let value_start = key_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let key = self.buffer.get(self.data..key_end)?;
        let value = self.buffer.get(value_start..value_end)?;
        self.data = value_end.checked_add(1)?;
        self.next += 1;
        Some((key, value))
    }
}

fn read_u32(buffer: &[u8], at: usize) -> Option<usize> {
    let bytes = buffer.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (key, value) in pairs {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (key, value) in pairs {
            out.extend_from_slice(key.as_bytes());
            out.push(0);
            out.extend_from_slice(value);
            out.push(0);
        }
        out
    }

    fn snapshot(pairs: &[(&str, &[u8])]) -> HeaderSnapshot {
        let snapshot = HeaderSnapshot::request();
        let _ = snapshot.read.set(serialize(pairs));
        snapshot
    }

    #[test]
    fn lookups_read_the_hosts_buffer_in_place() {
        let s = snapshot(&[
            (":path", b"/a?b"),
            ("x-list", b"1"),
            ("x-list", b"2"),
            ("x-odd", b"caf\xe9"),
            ("x-empty", b""),
        ]);
        assert_eq!(s.get(":path"), Some("/a?b"));
        assert_eq!(s.get("x-list"), Some("1"), "the first value");
        assert_eq!(s.get("X-List"), Some("1"));
        assert_eq!(s.get("x-empty"), Some(""));
        assert_eq!(s.get("x-absent"), None);
        // Not UTF-8: no value to read, but the header is there.
        assert_eq!(s.get("x-odd"), None);
        assert!(s.contains("x-odd"));
    }

    #[test]
    fn a_malformed_buffer_reads_as_fewer_headers_never_past_its_end() {
        let mut bytes = serialize(&[("a", b"1"), ("b", b"2")]);
        bytes.truncate(bytes.len() - 3);
        let s = HeaderSnapshot::request();
        let _ = s.read.set(bytes);
        assert_eq!(s.get("a"), Some("1"));
        assert_eq!(s.get("b"), None);
        let s = HeaderSnapshot::request();
        let _ = s.read.set(vec![0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(s.get("a"), None);
    }

    // Edits call the host and cannot run natively; what they record is checked
    // through `forget` and `added` directly.
    #[test]
    fn recorded_edits_shadow_the_values_as_read() {
        let mut s = snapshot(&[("x-user-id", b"spoofed"), ("x-keep", b"1")]);
        s.forget("x-user-id");
        assert_eq!(s.get("x-user-id"), None);
        assert!(!s.contains("x-user-id"));
        s.added.push(("x-user-id".into(), "alice".into()));
        assert_eq!(s.get("x-user-id"), Some("alice"));
        // An added value comes after the ones read: the first value stays.
        s.added.push(("x-keep".into(), "2".into()));
        assert_eq!(s.get("x-keep"), Some("1"));
        s.forget("x-keep");
        assert_eq!(s.get("x-keep"), None);
    }
}
