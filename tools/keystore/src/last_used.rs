//! When each key was last found, written in batches off the lookup path.
//!
//! A lookup only notes the time in memory. A key whose last use was never written, or
//! was written longer than `interval` ago, asks for a write soon; the writer then
//! writes every key noted since, at most once a second. So `keys list` sees a key's
//! first use at once, and a busy key costs one write per `interval` per replica,
//! whatever its traffic.

use crate::store::Backend;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The shortest time between two writes.
const MIN_WRITE_SPACING: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Entry {
    latest: u64,
    written: Option<u64>,
    dirty: bool,
}

/// The pending last-use times (logic only; `now` is passed in).
#[derive(Debug)]
pub struct LastUsed {
    interval: u64,
    entries: Mutex<HashMap<String, Entry>>,
}

impl LastUsed {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval: interval.as_secs().max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `key_id` was found at `now`; `true` when it should be written soon.
    pub fn note(&self, key_id: &str, now: u64) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match entries.get_mut(key_id) {
            Some(entry) => entry,
            None => entries.entry(key_id.to_owned()).or_default(),
        };
        if now <= entry.latest && entry.written.is_some() {
            return false;
        }
        entry.latest = entry.latest.max(now);
        entry.dirty = true;
        entry
            .written
            .is_none_or(|written| now >= written + self.interval)
    }

    /// The times to write, marked as written (put them back with [`Self::failed`] if
    /// the write fails).
    pub fn take(&self) -> Vec<(String, u64)> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter_mut()
            .filter(|(_, entry)| entry.dirty)
            .map(|(key_id, entry)| {
                entry.dirty = false;
                entry.written = Some(entry.latest);
                (key_id.clone(), entry.latest)
            })
            .collect()
    }

    pub fn failed(&self, batch: &[(String, u64)]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (key_id, _) in batch {
            if let Some(entry) = entries.get_mut(key_id) {
                entry.dirty = true;
            }
        }
    }
}

/// The writer: wakes when asked (`wake`) or every `interval`, writes what
/// [`LastUsed::take`] gives; one last write when `stop` is notified.
pub struct LastUsedWriter {
    pub pending: Arc<LastUsed>,
    pub wake: Arc<Notify>,
    pub stop: Arc<Notify>,
    pub interval: Duration,
}

impl LastUsedWriter {
    pub async fn run(self, backend: Arc<Backend>) {
        loop {
            let stopping = tokio::select! {
                () = self.wake.notified() => false,
                () = tokio::time::sleep(self.interval) => false,
                () = self.stop.notified() => true,
            };
            write(&self.pending, &backend).await;
            if stopping {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(MIN_WRITE_SPACING) => {}
                () = self.stop.notified() => {
                    write(&self.pending, &backend).await;
                    return;
                }
            }
        }
    }
}

async fn write(pending: &LastUsed, backend: &Backend) {
    let batch = pending.take();
    if batch.is_empty() {
        return;
    }
    if let Err(err) = backend.write_last_used(&batch).await {
        pending.failed(&batch);
        tracing::warn!(error = %err, keys = batch.len(), "cannot record when keys were last used; will retry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_is_written_soon_then_at_most_once_per_interval() {
        let pending = LastUsed::new(Duration::from_secs(30));
        assert!(pending.note("key_a", 100), "never written: write soon");
        assert!(pending.note("key_a", 101), "still not written");
        assert_eq!(pending.take(), [("key_a".to_owned(), 101)]);
        assert!(pending.take().is_empty(), "nothing new");

        assert!(!pending.note("key_a", 110), "written 9 s ago");
        assert!(!pending.note("key_a", 130), "written 29 s ago");
        assert_eq!(
            pending.take(),
            [("key_a".to_owned(), 130)],
            "the periodic write"
        );
        assert!(!pending.note("key_a", 159));
        assert!(
            pending.note("key_a", 160),
            "the last write is an interval old"
        );
    }

    #[test]
    fn a_failed_write_is_tried_again() {
        let pending = LastUsed::new(Duration::from_secs(30));
        pending.note("key_a", 100);
        pending.note("key_b", 100);
        let mut batch = pending.take();
        batch.sort();
        pending.failed(&batch);
        pending.note("key_a", 105);
        let mut again = pending.take();
        again.sort();
        assert_eq!(
            again,
            [("key_a".to_owned(), 105), ("key_b".to_owned(), 100)]
        );
    }

    #[test]
    fn repeated_hits_in_one_second_change_nothing() {
        let pending = LastUsed::new(Duration::from_secs(30));
        pending.note("key_a", 100);
        pending.take();
        for _ in 0..1000 {
            assert!(!pending.note("key_a", 100));
        }
        assert!(pending.take().is_empty());
    }
}
