//! A blob-result cache shared beyond one scan: the raw matches of a blob
//! under a detector, keyed by (detection digest, blob id). A blob whose result is known
//! is not read again, whichever branch, fork or rescan meets it. The cluster
//! keeps it behind the coordinator; [`MemoryBlobCache`] keeps it in memory.

use std::{collections::HashMap, fmt, sync::Mutex};

use crate::secret::Secret;

/// A git object id (SHA-1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 20]);

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

/// One raw match of a cached blob result (see
/// [`crate::Scanner::scan_raw`]): enough to apply any policy's filters
/// without reading the blob again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedMatch {
    pub rule_id: String,
    /// 1-based line of the start of the secret.
    pub line: u32,
    /// Byte range of the secret in the blob.
    pub start: u64,
    pub end: u64,
    pub secret: Secret,
    /// The match's line, clipped (what allowlist line regexes see).
    pub context: Vec<u8>,
}

/// Where a scan looks up and stores blob results. Failures are the
/// implementation's to report: an unknown result only costs a read.
pub trait BlobCache: Sync {
    /// For each blob, its matches under `ruleset_digest` when known (an empty
    /// list: a clean blob), `None` when not.
    fn lookup(&self, ruleset_digest: &str, blobs: &[BlobId]) -> Vec<Option<Vec<CachedMatch>>>;
    /// Records the results of blobs this scan read.
    fn store(&self, ruleset_digest: &str, results: Vec<(BlobId, Vec<CachedMatch>)>);
}

/// No cache: every blob is read.
pub struct NoCache;

impl BlobCache for NoCache {
    fn lookup(&self, _: &str, blobs: &[BlobId]) -> Vec<Option<Vec<CachedMatch>>> {
        vec![None; blobs.len()]
    }

    fn store(&self, _: &str, _: Vec<(BlobId, Vec<CachedMatch>)>) {}
}

/// A cache in memory, for one process.
#[derive(Default)]
pub struct MemoryBlobCache {
    entries: Mutex<HashMap<(String, BlobId), Vec<CachedMatch>>>,
}

impl MemoryBlobCache {
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BlobCache for MemoryBlobCache {
    fn lookup(&self, ruleset_digest: &str, blobs: &[BlobId]) -> Vec<Option<Vec<CachedMatch>>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        blobs
            .iter()
            .map(|blob| entries.get(&(ruleset_digest.to_string(), *blob)).cloned())
            .collect()
    }

    fn store(&self, ruleset_digest: &str, results: Vec<(BlobId, Vec<CachedMatch>)>) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (blob, matches) in results {
            entries.insert((ruleset_digest.to_string(), blob), matches);
        }
    }
}
