//! A revisioned key-value store with watch, in etcd's model.
//!
//! Every write gets the next value of one global revision; each key remembers the revision that
//! created it and the one that last modified it. Writers compare-and-swap on the modification
//! revision; readers range over a prefix; watchers receive every change under a prefix after a
//! given revision, or learn that the revision has been compacted away.
//!
//! The store knows keys, revisions and bytes: never kinds. [`Backend`] is the interface every
//! backend implements; [`embedded::Embedded`] is the default (redb on local disk behind a
//! write-ahead log, every acknowledged write synced). [`conformance`] holds the tests every backend must pass.

pub mod conformance;
pub mod embedded;
mod wal;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future, so that [`Backend`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The result type of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The key does not exist.
    #[error("key not found")]
    NotFound,
    /// A create found the key present.
    #[error("key already exists")]
    AlreadyExists,
    /// A compare-and-swap found another modification revision.
    #[error("revision mismatch: the key is at revision {current}")]
    Conflict {
        /// The key's current modification revision.
        current: u64,
    },
    /// A watch asked for history that is no longer kept.
    #[error("required revision {requested} has been compacted (oldest kept: {oldest})")]
    Compacted {
        /// The revision the caller asked to start after.
        requested: u64,
        /// The oldest revision still available.
        oldest: u64,
    },
    /// The backend failed to read or write durably; the write was not applied.
    #[error("storage failure: {0}")]
    Storage(String),
}

/// One key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Arc<[u8]>,
    /// The revision of the write that created the key.
    pub create_revision: u64,
    /// The revision of the write that last modified the key.
    pub mod_revision: u64,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The key was created or modified.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change, as a watcher receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventType,
    /// For a put, the new state. For a delete, the last state, with `mod_revision` set to the
    /// revision of the delete.
    pub kv: KeyValue,
    /// The state before this change, if the key existed.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision of this change.
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}

/// The answer to a range read.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut the range short.
    pub more: bool,
    /// How many keys remained after the last one returned.
    pub remaining: usize,
    /// The store revision the range was read at.
    pub revision: u64,
}

/// A stream of changes under a prefix. Dropping it ends the watch.
pub struct Watch {
    /// The events, in revision order. The channel closes when the watcher falls too far behind
    /// (the client must list again) or the store shuts down.
    pub events: tokio::sync::mpsc::Receiver<Event>,
}

/// A watch that begins with a consistent snapshot: the keys under the prefix at `revision`, then
/// every change after it.
pub struct ListWatch {
    /// The keys at `revision`.
    pub kvs: Vec<KeyValue>,
    /// The revision of the snapshot.
    pub revision: u64,
    /// The changes after `revision`.
    pub watch: Watch,
}

/// A revisioned store with watch. Implementations must pass [`conformance`].
pub trait Backend: Send + Sync + 'static {
    /// The current state of one key.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;
    /// Keys starting with `prefix`, after `start_after` (exclusive) when given, at most `limit`
    /// (0 = no limit).
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Range>>;
    /// Creates a key that must not exist; returns the new revision.
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<u64>>;
    /// Replaces a key whose modification revision must equal `expected`; returns the new
    /// revision.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'a, Result<u64>>;
    /// Deletes a key, if `expected` is given only when its modification revision equals it;
    /// returns the revision of the delete and the last state.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(u64, KeyValue)>>;
    /// Changes under `prefix` with a revision greater than `after`.
    fn watch<'a>(&'a self, prefix: &'a str, after: u64) -> BoxFuture<'a, Result<Watch>>;
    /// The keys under `prefix` now, and every change after them, with no gap between.
    fn list_watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListWatch>>;
    /// The revision of the last write.
    fn revision(&self) -> u64;
    /// Forgets history up to and including `revision`: watches from before it fail with
    /// [`Error::Compacted`].
    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<()>>;
    /// Whether the stored form of a key is out of date (written with a key that is no longer
    /// the one to write with), so that an unchanged update must still be written.
    fn stale<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
}
