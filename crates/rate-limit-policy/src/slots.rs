//! A fixed keyspace in shared data where records of an unbounded set of keys live.
//!
//! Envoy never frees a shared-data key, and a client can invent a new identity for every
//! request, so per-client records (token buckets, leases) live in a fixed number of slots
//! (`<prefix><i>`) created when the filter is configured. A key's digest picks a start slot;
//! the key's record lives in the first slot of the next `probe` slots that holds its digest.
//! A new key takes the first slot of that window that is vacant or whose record says it may
//! be reused (what "reusable" means is the record's business: a bucket that refilled, a lease
//! that was settled). Every write is a compare-and-swap on one slot.
//!
//! This module knows nothing of what a record holds.

use wasmgate_shared_store::{Cas, SharedStore};

/// Identifies a key: the first 16 bytes of a SHA-256 over what the key is made of.
pub type Digest = [u8; 16];

/// The fixed-size set of slots, and where their keys live in shared data.
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
    /// A slot the key may take: vacant, or holding a record that may be reused.
    Claim {
        index: u32,
        key: String,
        cas: Cas,
        vacant: bool,
    },
    /// No slot in the probe window.
    Full,
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

    fn start(&self, digest: &Digest) -> u32 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        (u64::from_le_bytes(head) % u64::from(self.slots)) as u32
    }

    /// Creates every slot (and every key of `extra`) that does not exist yet; returns how
    /// many it created and how many slots `occupied` says hold a record. Run at
    /// configuration time: a write to a key that does not exist ignores compare-and-swap,
    /// so keys are created here (empty) and only ever updated with compare-and-swap after.
    pub(crate) fn prepare(
        &self,
        store: &dyn SharedStore,
        extra: &[String],
        occupied: impl Fn(&[u8]) -> bool,
    ) -> (u64, u64) {
        let (mut created, mut held) = (0, 0);
        let keys = (0..self.slots)
            .map(|i| (self.slot_key(i), true))
            .chain(extra.iter().map(|k| (k.clone(), false)));
        for (key, is_slot) in keys {
            match store.get(&key) {
                Some((bytes, _)) => held += u64::from(is_slot && occupied(&bytes)),
                None => created += u64::from(store.set(&key, &[], None).is_ok()),
            }
        }
        (created, held)
    }

    /// Scans the probe window of `digest`: the key's own record if it is there, else the
    /// first slot it may take, else `Full`. `fit` judges each slot's bytes (without
    /// decoding more than it must: this runs on every request).
    ///
    /// Two workers placing the same new key at the same time read the same window and pick
    /// the same first free slot, so the compare-and-swap lets only one of them create it.
    /// (Only if a record in the window becomes reusable between their two reads can they
    /// pick different slots. The key then has a second record that later lookups skip,
    /// because they use the first in probe order; it is reused once reusable.)
    pub(crate) fn locate(
        &self,
        store: &dyn SharedStore,
        digest: &Digest,
        fit: impl Fn(&[u8]) -> Fit,
    ) -> Place {
        let start = self.start(digest);
        let mut claim = None;
        for step in 0..self.probe {
            let index = (start + step) % self.slots;
            let key = self.slot_key(index);
            let Some((bytes, cas)) = store.get(&key) else {
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
            if claim.is_none() {
                claim = Some(Place::Claim {
                    index,
                    key,
                    cas,
                    vacant,
                });
            }
        }
        claim.unwrap_or(Place::Full)
    }
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
