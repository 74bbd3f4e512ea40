//! API keys: finding the key in a request (and hiding it), the key store's answer and
//! its RFC 3339 timestamps, and the shared cache of answers.

use crate::Input;
use std::collections::HashMap;
use std::rc::Rc;
use wasmgate_api_key_auth::record::read_lookup_response;
use wasmgate_api_key_auth::timestamp::{format_rfc3339, parse_rfc3339};
use wasmgate_api_key_auth::{
    CachePolicy, KeyCache, KeyFormat, KeyHash, KeyHasher, KeyRecord, KeySources, KeyStatus, Lookup,
    Presented, RequestEdit, StoreAnswer,
};
use wasmgate_config::HeaderName;
use wasmgate_shared_store::{MemoryStore, SharedStore};

/// `api_key_credential`: sources (1 byte: bit 0 a header, bit 1 bearer, bit 2 the
/// query), the format (minimum length byte, maximum length u16, up to three prefix
/// chunks after a count byte), then the `x-api-key` and `authorization` values and
/// the `:path` (chunks; an empty header chunk leaves the header out).
pub fn credential(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let min_length = usize::from(input.byte()).max(1);
    let max_length = usize::from(input.u16()) % 4097;
    let prefix_count = input.byte() % 4;
    let mut prefixes: Vec<String> = (0..prefix_count).map(|_| input.text()).collect();
    // What the configuration parser lets through (`format`).
    prefixes.retain(|p| !p.is_empty() && p.len() < max_length && p.bytes().all(unreserved));
    if min_length > max_length {
        return;
    }
    let sources = KeySources {
        headers: if flags & 1 == 1 {
            vec![HeaderName::new("x-api-key").expect("a valid name")]
        } else {
            Vec::new()
        },
        bearer: flags & 2 == 2,
        query: (flags & 4 == 4).then(|| "api_key".to_owned()),
    };
    let format = KeyFormat {
        prefixes,
        min_length,
        max_length,
    };
    let mut headers: HashMap<&str, String> = HashMap::new();
    for name in ["x-api-key", "authorization"] {
        let value = input.text();
        if !value.is_empty() {
            headers.insert(name, value);
        }
    }
    let path = input.text();

    let lookup = |name: &str| headers.get(name).cloned();
    if let Presented::Key(key) = sources.find(&format, &lookup, &path) {
        assert_eq!(format.check(key.expose()), Ok(()));
        assert!(key.expose().bytes().all(unreserved));
    }

    // Hiding the key removes every copy of it: the request as forwarded has none.
    let mut hidden_headers = headers.clone();
    let mut hidden_path = path.clone();
    for edit in sources.hiding_edits(&format, &lookup, &path) {
        match edit {
            RequestEdit::Remove(name) => {
                hidden_headers.remove(name);
            }
            RequestEdit::Set(":path", value) => hidden_path = value.into_owned(),
            RequestEdit::Set(name, _) => panic!("hiding the key sets {name}"),
        }
    }
    let hidden_lookup = |name: &str| hidden_headers.get(name).cloned();
    assert_eq!(
        sources.find(&format, &hidden_lookup, &hidden_path),
        Presented::Missing,
        "a key is left after hiding it: {hidden_headers:?} {hidden_path:?}"
    );
}

/// RFC 3986 unreserved characters, the only ones a well-formed key has.
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// `api_key_record`: a mode byte, then bytes. Modes 0 to 3: the key store answered
/// with status 200, 404 or 503, or not at all, with this body (bit 7 of the mode: the
/// body was truncated). Mode 4: an RFC 3339 timestamp.
pub fn record(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let bytes = input.rest();
    if mode & 0x7f == 4 {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(seconds) = parse_rfc3339(&text) {
            let written = format_rfc3339(seconds);
            assert_eq!(
                parse_rfc3339(&written),
                Ok(seconds),
                "{text:?} reads as {seconds}, written back as {written:?}"
            );
        }
        return;
    }
    let status = [Some(200), Some(404), Some(503), None][usize::from(mode & 3)];
    let truncated = mode & 0x80 != 0;
    let Ok(StoreAnswer::Found(record)) = read_lookup_response(status, bytes, truncated) else {
        return;
    };
    assert_eq!(record.check(), Ok(()));
    // The contract has one definition: what the key store writes for this record, the
    // filter reads back as the same record.
    let written = serde_json::to_vec(&record).expect("a record serialises");
    assert_eq!(
        read_lookup_response(Some(200), &written, false),
        Ok(StoreAnswer::Found(record))
    );
}

const CACHE_POLICY: CachePolicy = CachePolicy {
    slots: 3,
    ttl_ms: 1_000,
    negative_ttl_ms: 400,
    max_stale_ms: 2_000,
    error_backoff_ms: 300,
    claim_ms: 250,
    max_in_flight: 4,
};
const KEYS: usize = 6;
const START_MS: u64 = 1_767_225_600_000;

/// `api_key_cache`: operations on two VMs' caches over one shared store, until the
/// input runs out. Each is an opcode byte, then its operands: 0 `begin`, 1 `complete`
/// (a found or a not-found answer), 2 `fail`, 3 `usable` (a VM byte and a key byte
/// each), 4 time passes (u16 ms), 5 a slot is overwritten with a chunk of bytes (a slot
/// byte), 6 the next CAS writes fail (a count byte).
///
/// Checked: the table never grows; an answer handed out for a key is one the store
/// gave for that key (never another key's), and a fresh one is within its TTL.
pub fn cache(data: &[u8]) {
    let mut input = Input::new(data);
    let store = MemoryStore::new();
    let vms = [
        KeyCache::new(&store, "fz", CACHE_POLICY),
        KeyCache::new(&store, "fz", CACHE_POLICY),
    ];
    vms[0].create_table();
    vms[1].create_table();
    // The slots and the in-flight permit counter: nothing is ever added to them.
    let table = store.key_count();
    let hashes: Vec<KeyHash> = (0..KEYS)
        .map(|i| KeyHasher::Sha256.hash(&format!("sk_fuzz_{i}")))
        .collect();
    // Answers the store gave, per key: the answer and when.
    let mut given: Vec<Vec<(Rc<StoreAnswer>, u64)>> = vec![Vec::new(); KEYS];
    let mut overwritten: Vec<String> = Vec::new();
    let mut now = START_MS;
    let mut version = 0u32;
    while !input.is_empty() {
        let op = input.byte() % 7;
        match op {
            0..=3 => {
                let vm = &vms[usize::from(input.byte()) % 2];
                let key = usize::from(input.byte()) % KEYS;
                let hash = &hashes[key];
                let lookup = match op {
                    0 => vm.begin(hash, now),
                    1 => {
                        version += 1;
                        let answer = if version.is_multiple_of(3) {
                            StoreAnswer::NotFound
                        } else {
                            StoreAnswer::Found(record_of(key, version))
                        };
                        given[key].push((Rc::new(answer.clone()), now));
                        vm.complete(hash, &answer, now)
                    }
                    2 => vm.fail(hash, now),
                    _ => vm.usable(hash, now),
                };
                if vm
                    .slot_keys(hash)
                    .iter()
                    .any(|slot| overwritten.contains(slot))
                {
                    continue;
                }
                match lookup {
                    Lookup::Fresh(answer) => {
                        let ttl = |a: &StoreAnswer| match a {
                            StoreAnswer::Found(_) => CACHE_POLICY.ttl_ms,
                            StoreAnswer::NotFound => CACHE_POLICY.negative_ttl_ms,
                        };
                        assert!(
                            given[key]
                                .iter()
                                .any(|(a, at)| **a == *answer && now < at + ttl(a)),
                            "key {key}: fresh {answer:?} at {now} was not given within its TTL"
                        );
                    }
                    Lookup::Stale(answer) => assert!(
                        given[key].iter().any(|(a, _)| **a == *answer),
                        "key {key}: stale {answer:?} was never given for it"
                    ),
                    _ => {}
                }
            }
            4 => now += u64::from(input.u16()),
            5 => {
                let slot = format!("fz.{}", input.byte() % 3);
                let bytes = input.chunk();
                store
                    .set(&slot, bytes, None)
                    .expect("the store takes any bytes");
                overwritten.push(slot);
            }
            _ => store.fail_next_sets(u32::from(input.byte() % 8)),
        }
        assert_eq!(
            store.key_count(),
            table,
            "the table grew: {:?}",
            store.keys()
        );
    }
}

fn record_of(key: usize, version: u32) -> KeyRecord {
    KeyRecord {
        key_id: format!("key{key}-{version}"),
        tenant_id: format!("tenant{key}"),
        plan: None,
        scopes: vec!["orders:read".into()],
        status: if version.is_multiple_of(5) {
            KeyStatus::Revoked
        } else {
            KeyStatus::Active
        },
        expires_at: None,
    }
}
