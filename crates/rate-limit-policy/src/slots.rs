//! A bounded keyspace in shared data where records of an unbounded set of keys live.
//!
//! Envoy never frees a shared-data key, and a client can invent a new identity for every
//! request, so per-client records (token buckets, leases) live in at most `slots` slots
//! (`<prefix><i>`). A key's digest picks a start slot; the key's record lives in the first
//! slot of the next `probe` slots that holds its digest. A new key takes the first slot of
//! that window that is vacant or whose record says it may be reused (what "reusable" means
//! is the record's business: a bucket that refilled, a lease that was settled), else the
//! first slot of the window that does not exist yet. Every write to a slot that exists is a
//! compare-and-swap on that one slot.
//!
//! A slot is created when a key first needs it, so the table costs memory in proportion to
//! the keys seen, up to `slots`. Creating a key ignores compare-and-swap (Envoy's shared
//! data stores a write to a missing key whatever CAS it carries), so creation is locked:
//! every 64 slots share a *creation guard* (`<prefix>created.<n>`, created when the filter
//! is configured), a bitmap of the slots someone has begun to create. Only the worker whose
//! compare-and-swap sets a slot's bit creates that slot (empty), then claims it like any
//! vacant slot; a worker that finds the bit set and the slot still missing retries.
//!
//! This module knows nothing of what a record holds.

use wasmgate_shared_store::{Cas, SharedStore};

/// Identifies a key: the first 16 bytes of a SHA-256 over what the key is made of.
pub type Digest = [u8; 16];

/// Slots per creation guard: one bit each in the guard's 8-byte bitmap.
const GUARDED: u32 = 64;

/// The bounded set of slots, and where their keys live in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotTable {
    prefix: String,
    slots: u32,
    probe: u32,
}

/// One slot's content, as a record type reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot<R> {
    Vacant,
    Held(Digest, R),
    /// Bytes this version cannot read (another format): reusable.
    Unreadable,
}

/// What a slot is to the key being placed, as the record type judges its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Empty.
    Vacant,
    /// The key's own record.
    Mine,
    /// Another key's record that may be replaced (or bytes nobody can read).
    Reusable,
    /// Another key's record, in use.
    Taken,
}

/// Where a key's record is, or where it will go.
#[derive(Debug)]
pub(crate) enum Place {
    /// The key's own record (its bytes), in slot `index`.
    Found {
        index: u32,
        key: String,
        cas: Cas,
        bytes: Vec<u8>,
    },
    /// A slot the key may take: vacant (perhaps created just now), or holding a record
    /// that may be reused.
    Claim {
        index: u32,
        key: String,
        cas: Cas,
        vacant: bool,
    },
    /// The slot the key should take is being created by another worker (or was created
    /// under us): look again, as after a lost compare-and-swap.
    Busy,
    /// No slot in the probe window.
    Full,
}

/// What [`SlotTable::prepare`] found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Census {
    /// Keys this call created: creation guards, and keys of `extra`.
    pub(crate) created: u64,
    /// Slots that exist (were ever needed), and of them those holding a record.
    pub(crate) existing: u64,
    pub(crate) held: u64,
}

impl SlotTable {
    /// `1 <= probe <= slots` (checked by the config parser).
    pub(crate) fn new(prefix: String, slots: u32, probe: u32) -> Self {
        Self {
            prefix,
            slots,
            probe,
        }
    }

    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn slot_key(&self, index: u32) -> String {
        format!("{}{index}", self.prefix)
    }

    pub(crate) fn guard_key(&self, guard: u32) -> String {
        format!("{}created.{guard}", self.prefix)
    }

    fn guards(&self) -> u32 {
        self.slots.div_ceil(GUARDED)
    }

    /// The slots guard `guard` covers.
    fn guarded(&self, guard: u32) -> std::ops::Range<u32> {
        guard * GUARDED..((guard + 1) * GUARDED).min(self.slots)
    }

    fn start(&self, digest: &Digest) -> u32 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        (u64::from_le_bytes(head) % u64::from(self.slots)) as u32
    }

    /// Creates every creation guard (and every key of `extra`) that does not exist yet, and
    /// counts the slots that exist and those `occupied` says hold a record. Run at
    /// configuration time, before this VM places a key. Slots themselves are created when
    /// first needed ([`SlotTable::locate`]).
    ///
    /// A guard created here marks the slots of its range that already exist (made by a
    /// version that created every slot up front), so the census counts them.
    pub(crate) fn prepare(
        &self,
        store: &dyn SharedStore,
        extra: &[String],
        occupied: impl Fn(&[u8]) -> bool,
    ) -> Census {
        let mut census = Census::default();
        for guard in 0..self.guards() {
            let key = self.guard_key(guard);
            let bits = match store.get(&key) {
                Some((bytes, _)) => read_bits(&bytes),
                None => {
                    let bits = self
                        .guarded(guard)
                        .filter(|i| store.get(&self.slot_key(*i)).is_some())
                        .fold(0, |bits, i| bits | bit(i));
                    census.created += u64::from(store.set(&key, &bits.to_le_bytes(), None).is_ok());
                    bits
                }
            };
            for index in self.guarded(guard).filter(|i| bits & bit(*i) != 0) {
                if let Some((bytes, _)) = store.get(&self.slot_key(index)) {
                    census.existing += 1;
                    census.held += u64::from(occupied(&bytes));
                }
            }
        }
        for key in extra {
            if store.get(key).is_none() {
                census.created += u64::from(store.set(key, &[], None).is_ok());
            }
        }
        census
    }

    /// Scans the probe window of `digest`: the key's own record if it is there, else the
    /// first existing slot it may take, else the first missing slot (created now), else
    /// `Full`. Memory grows only when no slot of the window can be reused. `fit` judges
    /// each slot's bytes (without decoding more than it must: this runs on every request).
    ///
    /// Two workers placing the same new key at the same time read the same window and pick
    /// the same slot: if it exists, the compare-and-swap lets only one of them write it; if
    /// it is missing, only one creates it and the other looks again (`Busy`). A caller
    /// that has looked again enough passes `patient: false`: a slot still being created
    /// then counts as no slot (`Full`), so a creation that never finished (a guard
    /// overwritten by a stranger) sends newcomers to the overflow bucket, not around in
    /// circles. (Only if
    /// a record in the window becomes reusable between their two reads can they pick
    /// different slots. The key then has a second record that later lookups skip, because
    /// they use the first in probe order; it is reused once reusable.)
    pub(crate) fn locate(
        &self,
        store: &dyn SharedStore,
        digest: &Digest,
        patient: bool,
        fit: impl Fn(&[u8]) -> Fit,
    ) -> Place {
        let start = self.start(digest);
        let (mut claim, mut missing) = (None, None);
        for step in 0..self.probe {
            let index = (start + step) % self.slots;
            let key = self.slot_key(index);
            let Some((bytes, cas)) = store.get(&key) else {
                missing.get_or_insert((index, key));
                continue;
            };
            let vacant = match fit(&bytes) {
                Fit::Mine => {
                    return Place::Found {
                        index,
                        key,
                        cas,
                        bytes,
                    };
                }
                Fit::Taken => continue,
                Fit::Vacant => true,
                Fit::Reusable => false,
            };
            claim.get_or_insert(Place::Claim {
                index,
                key,
                cas,
                vacant,
            });
        }
        match (claim, missing) {
            (Some(claim), _) => claim,
            (None, Some((index, key))) => self.create(store, index, key, patient, fit),
            (None, None) => Place::Full,
        }
    }

    /// Creates the missing slot `index` if this worker wins its bit in the guard, and
    /// offers it to the key; `Busy` if another worker is creating it (or took it since),
    /// `Full` instead if that worker is creating it and the caller is not `patient`.
    fn create(
        &self,
        store: &dyn SharedStore,
        index: u32,
        key: String,
        patient: bool,
        fit: impl Fn(&[u8]) -> Fit,
    ) -> Place {
        let guard = self.guard_key(index / GUARDED);
        // No guard: the table was never prepared, and there is nowhere to write.
        let Some((bytes, guard_cas)) = store.get(&guard) else {
            return Place::Full;
        };
        let bits = read_bits(&bytes);
        if bits & bit(index) != 0 {
            return if patient { Place::Busy } else { Place::Full };
        }
        // Bytes of another format read as no bits: the compare-and-swap still holds them.
        if store
            .set(&guard, &(bits | bit(index)).to_le_bytes(), Some(guard_cas))
            .is_err()
        {
            return Place::Busy;
        }
        // Ours alone to create. (A slot created between our scan and our bit, by a worker
        // that set the bit and finished, has its bit set; we saw it clear.)
        if store.set(&key, &[], None).is_err() {
            return Place::Busy;
        }
        match store.get(&key) {
            Some((bytes, cas)) if fit(&bytes) == Fit::Vacant => Place::Claim {
                index,
                key,
                cas,
                vacant: true,
            },
            _ => Place::Busy,
        }
    }
}

fn bit(index: u32) -> u64 {
    1 << (index % GUARDED)
}

/// A guard's bitmap; any other bytes read as "nothing created".
fn read_bits(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

/// Little-endian fields out of a record's bytes; `None` once they run out.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    pub(crate) fn digest(&mut self) -> Option<Digest> {
        self.bytes(16)?.try_into().ok()
    }

    /// A string of at most 255 bytes, written after its length byte (borrowed).
    pub(crate) fn short_text(&mut self) -> Option<&'a str> {
        let len = usize::from(self.u8()?);
        std::str::from_utf8(self.bytes(len)?).ok()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Appends `text` (at most 255 bytes: longer is cut at a character boundary) after its length.
pub(crate) fn write_short_text(bytes: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    bytes.push(end as u8);
    bytes.extend_from_slice(&text.as_bytes()[..end]);
}
