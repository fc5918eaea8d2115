//! The embedded backend: redb on local disk behind a write-ahead log, with the whole current
//! state and a window of recent history in memory.
//!
//! One writer thread owns the database and the log. Concurrent writes queue up and are appended
//! to the log together with one `fdatasync` (group commit), then applied to the in-memory index
//! and sent to watchers, then acknowledged. The database catches up in checkpoints (many writes
//! per durable redb commit), after which the log is emptied; on start the log's newer records
//! are replayed. Reads never touch the disk. An acknowledged write has been synced to the log, so
//! `kill -9` loses nothing that was acknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, mpsc as std_mpsc};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::wal::Wal;
use crate::{
    Backend, BoxFuture, Error, Event, EventType, KeyValue, ListWatch, Range, Result, Watch,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// How many recent events are kept for watches that start in the past.
const HISTORY: usize = 20_000;
/// How many writes one transaction takes at most.
const MAX_BATCH: usize = 512;
/// The memory redb may cache pages in (its default is 1 GiB). Reads are served from memory and
/// never reach redb, which is only written at checkpoints, so its cache would mostly hold a
/// second copy of the state; the pages a checkpoint rewrites come from the OS's page cache.
const REDB_CACHE: usize = 16 << 20;
/// How many events a watcher may have unread before it is cut off.
const WATCH_BUFFER: usize = 4096;
/// A checkpoint is taken when the log holds this many bytes...
const CHECKPOINT_BYTES: u64 = 16 << 20;
/// ...or when writes pause for this long.
const CHECKPOINT_IDLE: std::time::Duration = std::time::Duration::from_millis(500);

/// The embedded store. Cloning shares it.
#[derive(Clone)]
pub struct Embedded {
    shared: Arc<Shared>,
    writes: std_mpsc::Sender<Request>,
}

struct Shared {
    state: Mutex<State>,
}

struct State {
    kvs: BTreeMap<String, KeyValue>,
    revision: u64,
    /// Every event with a revision above `floor` is in `history`.
    floor: u64,
    history: VecDeque<Event>,
    watchers: Vec<Watcher>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Event>,
}

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: u64,
    },
    Delete {
        key: String,
        expected: Option<u64>,
    },
}

type Reply = Result<(u64, Option<KeyValue>)>;

struct Request {
    op: Op,
    reply: oneshot::Sender<Reply>,
}

impl Embedded {
    /// Opens (or creates) the store in the file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::builder()
            .set_cache_size(REDB_CACHE)
            .create(path)
            .map_err(storage)?;
        let (mut kvs, mut revision) = load(&db)?;
        let (mut wal, records) = Wal::open(&path.with_extension("wal"))?;
        let replay: Vec<Event> = records
            .into_iter()
            .filter(|r| r.kv.mod_revision > revision)
            .map(|r| Event {
                kind: r.kind,
                kv: r.kv,
                prev: None,
            })
            .collect();
        for e in &replay {
            revision = e.revision();
            match e.kind {
                EventType::Put => kvs.insert(e.kv.key.clone(), e.kv.clone()),
                EventType::Delete => kvs.remove(&e.kv.key),
            };
        }
        checkpoint(&db, &mut wal, &replay)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                kvs,
                revision,
                floor: revision,
                history: VecDeque::new(),
                watchers: Vec::new(),
            }),
        });
        let (writes, queue) = std_mpsc::channel();
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(db, wal, writer_shared, queue))
            .map_err(|e| Error::Storage(format!("cannot start the store writer: {e}")))?;
        Ok(Self { shared, writes })
    }

    async fn submit(&self, op: Op) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Request { op, reply })
            .map_err(|_| Error::Storage("the store writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Storage("the store writer has stopped".into()))?
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as the last completed
        // write, so keep serving rather than poisoning every later request.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

fn encode(create_revision: u64, mod_revision: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue> {
    if raw.len() < 16 {
        return Err(Error::Storage(format!("corrupt record for key {key}")));
    }
    let (c, rest) = raw.split_at(8);
    let (m, value) = rest.split_at(8);
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    Ok(KeyValue {
        key: key.to_string(),
        value: value.into(),
        create_revision: word(c),
        mod_revision: word(m),
    })
}

fn load(db: &Database) -> Result<(BTreeMap<String, KeyValue>, u64)> {
    let txn = db.begin_write().map_err(storage)?;
    {
        // make sure both tables exist so that read transactions can open them
        txn.open_table(KV).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    let txn = db.begin_read().map_err(storage)?;
    let kv = txn.open_table(KV).map_err(storage)?;
    let meta = txn.open_table(META).map_err(storage)?;
    let revision = meta
        .get(REVISION)
        .map_err(storage)?
        .map(|v| v.value())
        .unwrap_or(0);
    let mut kvs = BTreeMap::new();
    for entry in kv.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let item = decode(k.value(), v.value())?;
        kvs.insert(item.key.clone(), item);
    }
    Ok((kvs, revision))
}

/// What one planned write will do once committed.
struct Planned {
    event: Event,
    reply: oneshot::Sender<Reply>,
}

fn writer(db: Database, mut wal: Wal, shared: Arc<Shared>, queue: std_mpsc::Receiver<Request>) {
    let mut unsaved: Vec<Event> = Vec::new();
    loop {
        let first = match queue.recv_timeout(CHECKPOINT_IDLE) {
            Ok(r) => r,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if !unsaved.is_empty() && checkpoint(&db, &mut wal, &unsaved).is_ok() {
                    unsaved.clear();
                }
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (planned, rejected) = plan(&shared, batch);
        for (reply, err) in rejected {
            let _ = reply.send(Err(err));
        }
        if planned.is_empty() {
            continue;
        }
        let events: Vec<&Event> = planned.iter().map(|p| &p.event).collect();
        match wal.append(&events) {
            Ok(()) => {
                unsaved.extend(planned.iter().map(|p| p.event.clone()));
                apply(&shared, planned);
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed");
                for p in planned {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
        if wal.size() > CHECKPOINT_BYTES && checkpoint(&db, &mut wal, &unsaved).is_ok() {
            unsaved.clear();
        }
    }
    if !unsaved.is_empty() {
        let _ = checkpoint(&db, &mut wal, &unsaved);
    }
}

type Rejected = Vec<(oneshot::Sender<Reply>, Error)>;

/// Checks each write's precondition against the state as the earlier writes of the batch leave
/// it, and assigns revisions.
fn plan(shared: &Shared, batch: Vec<Request>) -> (Vec<Planned>, Rejected) {
    let state = shared.lock();
    let mut revision = state.revision;
    let mut overlay: HashMap<String, Option<KeyValue>> = HashMap::new();
    let mut planned = Vec::new();
    let mut rejected = Vec::new();
    for Request { op, reply } in batch {
        let key = match &op {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key.clone(),
        };
        let current = match overlay.get(&key) {
            Some(v) => v.clone(),
            None => state.kvs.get(&key).cloned(),
        };
        let outcome = match (op, current) {
            (Op::Create { .. }, Some(_)) => Err(Error::AlreadyExists),
            (Op::Create { value, .. }, None) => {
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.into(),
                    create_revision: revision + 1,
                    mod_revision: revision + 1,
                };
                Ok((EventType::Put, kv, None))
            }
            (Op::Update { .. } | Op::Delete { .. }, None) => Err(Error::NotFound),
            (Op::Update { expected, .. }, Some(cur)) if cur.mod_revision != expected => {
                Err(Error::Conflict {
                    current: cur.mod_revision,
                })
            }
            (Op::Update { value, .. }, Some(cur)) => {
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.into(),
                    create_revision: cur.create_revision,
                    mod_revision: revision + 1,
                };
                Ok((EventType::Put, kv, Some(cur)))
            }
            (Op::Delete { expected, .. }, Some(cur))
                if expected.is_some_and(|e| e != cur.mod_revision) =>
            {
                Err(Error::Conflict {
                    current: cur.mod_revision,
                })
            }
            (Op::Delete { .. }, Some(cur)) => {
                let mut kv = cur.clone();
                kv.mod_revision = revision + 1;
                Ok((EventType::Delete, kv, Some(cur)))
            }
        };
        match outcome {
            Ok((kind, kv, prev)) => {
                revision += 1;
                overlay.insert(key, (kind == EventType::Put).then(|| kv.clone()));
                planned.push(Planned {
                    event: Event { kind, kv, prev },
                    reply,
                });
            }
            Err(e) => rejected.push((reply, e)),
        }
    }
    (planned, rejected)
}

/// Writes logged changes into the database in one durable commit, then empties the log. Only
/// the last change of each key is written (a pod is created, bound and updated within one
/// checkpoint), in key order, which is the order redb's B-tree inserts fastest.
fn checkpoint(db: &Database, wal: &mut Wal, events: &[Event]) -> Result<()> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    let latest: BTreeMap<&str, &Event> = events.iter().map(|e| (e.kv.key.as_str(), e)).collect();
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut kv = txn.open_table(KV).map_err(storage)?;
        for e in latest.into_values() {
            let item = &e.kv;
            match e.kind {
                EventType::Put => {
                    let raw = encode(item.create_revision, item.mod_revision, &item.value);
                    kv.insert(item.key.as_str(), raw.as_slice())
                        .map_err(storage)?;
                }
                EventType::Delete => {
                    kv.remove(item.key.as_str()).map_err(storage)?;
                }
            }
        }
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert(REVISION, last.revision()).map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    wal.truncate()
}

fn apply(shared: &Shared, planned: Vec<Planned>) {
    let mut replies = Vec::with_capacity(planned.len());
    {
        let mut state = shared.lock();
        for Planned { event, reply } in planned {
            state.revision = event.revision();
            match event.kind {
                EventType::Put => {
                    state.kvs.insert(event.kv.key.clone(), event.kv.clone());
                }
                EventType::Delete => {
                    state.kvs.remove(&event.kv.key);
                }
            }
            state.watchers.retain(|w| {
                if !event.kv.key.starts_with(&w.prefix) {
                    return !w.tx.is_closed();
                }
                // a watcher that cannot keep up is cut off: its client lists again
                w.tx.try_send(event.clone()).is_ok()
            });
            let answer = match event.kind {
                EventType::Put => event.prev.clone(),
                EventType::Delete => Some(event.kv.clone()),
            };
            replies.push((reply, (event.revision(), answer)));
            state.history.push_back(event);
            if state.history.len() > HISTORY
                && let Some(old) = state.history.pop_front()
            {
                state.floor = old.revision();
            }
        }
    }
    for (reply, answer) in replies {
        let _ = reply.send(Ok(answer));
    }
}

fn range_of(state: &State, prefix: &str, start_after: Option<&str>, limit: usize) -> Range {
    use std::ops::Bound;
    let lower = match start_after {
        Some(k) if k >= prefix => Bound::Excluded(k.to_string()),
        _ => Bound::Included(prefix.to_string()),
    };
    let mut iter = state
        .kvs
        .range((lower, Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix));
    let mut kvs = Vec::new();
    for (_, v) in iter.by_ref() {
        if limit != 0 && kvs.len() == limit {
            let remaining = 1 + iter.count();
            return Range {
                kvs,
                more: true,
                remaining,
                revision: state.revision,
            };
        }
        kvs.push(v.clone());
    }
    Range {
        kvs,
        more: false,
        remaining: 0,
        revision: state.revision,
    }
}

fn start_watch(state: &mut State, prefix: &str, after: u64) -> Result<Watch> {
    if after < state.floor {
        return Err(Error::Compacted {
            requested: after,
            oldest: state.floor,
        });
    }
    let backlog: Vec<&Event> = state
        .history
        .iter()
        .filter(|e| e.revision() > after && e.kv.key.starts_with(prefix))
        .collect();
    let (tx, events) = mpsc::channel(WATCH_BUFFER + backlog.len());
    for e in backlog {
        let _ = tx.try_send(e.clone());
    }
    state.watchers.push(Watcher {
        prefix: prefix.to_string(),
        tx,
    });
    Ok(Watch { events })
}

impl Backend for Embedded {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        let found = self.shared.lock().kvs.get(key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Range>> {
        let range = range_of(&self.shared.lock(), prefix, start_after, limit);
        Box::pin(async move { Ok(range) })
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let op = Op::Create {
                key: key.to_string(),
                value,
            };
            Ok(self.submit(op).await?.0)
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let op = Op::Update {
                key: key.to_string(),
                value,
                expected,
            };
            Ok(self.submit(op).await?.0)
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(u64, KeyValue)>> {
        Box::pin(async move {
            let op = Op::Delete {
                key: key.to_string(),
                expected,
            };
            let (revision, last) = self.submit(op).await?;
            let last = last.ok_or_else(|| Error::Storage("delete returned no state".into()))?;
            Ok((revision, last))
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: u64) -> BoxFuture<'a, Result<Watch>> {
        let watch = start_watch(&mut self.shared.lock(), prefix, after);
        Box::pin(async move { watch })
    }

    fn list_watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListWatch>> {
        let result = {
            let mut state = self.shared.lock();
            let range = range_of(&state, prefix, None, 0);
            let revision = state.revision;
            start_watch(&mut state, prefix, revision).map(|watch| ListWatch {
                kvs: range.kvs,
                revision,
                watch,
            })
        };
        Box::pin(async move { result })
    }

    fn revision(&self) -> u64 {
        self.shared.lock().revision
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<()>> {
        {
            let mut state = self.shared.lock();
            while state
                .history
                .front()
                .is_some_and(|e| e.revision() <= revision)
            {
                state.history.pop_front();
            }
            state.floor = state.floor.max(revision.min(state.revision));
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Embedded) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Embedded::open(&dir.path().join("db")).expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn conformance() {
        let (_dir, store) = open();
        crate::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn a_crash_before_the_checkpoint_loses_nothing() {
        let live = tempfile::tempdir().expect("tempdir");
        let store = Embedded::open(&live.path().join("db")).expect("open");
        for i in 0..100 {
            store
                .create(&format!("/k/{i}"), vec![b'v'; 10])
                .await
                .expect("create");
        }
        store.delete("/k/7", None).await.expect("delete");
        // what a kill -9 leaves on disk now: the log holds what the database does not yet
        let crashed = tempfile::tempdir().expect("tempdir");
        for f in ["db", "db.wal"] {
            std::fs::copy(live.path().join(f), crashed.path().join(f)).expect("copy");
        }
        let mut wal = std::fs::OpenOptions::new()
            .append(true)
            .open(crashed.path().join("db.wal"))
            .expect("wal");
        std::io::Write::write_all(&mut wal, &[9, 0, 0, 0, 1, 2]).expect("a torn record");
        let recovered = Embedded::open(&crashed.path().join("db")).expect("open");
        assert_eq!(recovered.revision(), 101);
        assert_eq!(
            recovered
                .range("/k/", None, 0)
                .await
                .expect("range")
                .kvs
                .len(),
            99
        );
        assert!(recovered.get("/k/7").await.expect("get").is_none());
        let rev = recovered
            .create("/after", b"x".to_vec())
            .await
            .expect("writes go on after recovery");
        assert_eq!(rev, 102);
    }

    #[tokio::test]
    async fn reopening_keeps_every_acknowledged_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = Embedded::open(&path).expect("open");
            store.create("/a", b"1".to_vec()).await.expect("create");
            let rev = store.create("/b", b"2".to_vec()).await.expect("create");
            store
                .update("/b", b"3".to_vec(), rev)
                .await
                .expect("update");
            store.delete("/a", None).await.expect("delete");
        }
        // the writer thread of the first store may still hold the file briefly
        let store = loop {
            match Embedded::open(&path) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        assert_eq!(store.revision(), 4);
        assert!(store.get("/a").await.expect("get").is_none());
        let b = store.get("/b").await.expect("get").expect("b exists");
        assert_eq!(&*b.value, b"3");
        assert_eq!((b.create_revision, b.mod_revision), (2, 3));
        let err = store.watch("/", 1).await.err();
        assert!(
            matches!(err, Some(Error::Compacted { .. })),
            "history is gone after a restart"
        );
    }

    #[tokio::test]
    async fn a_torn_tail_does_not_hide_later_writes() {
        // a log that ends in a torn record, and no newer records: the database is up to date
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let store = Embedded::open(&path).expect("open");
            store.create("/a", b"1".to_vec()).await.expect("create");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let wal = std::fs::OpenOptions::new()
            .write(true)
            .open(path.with_extension("wal"))
            .expect("wal");
        std::os::unix::fs::FileExt::write_all_at(&wal, &[200, 0, 0, 0, 1, 2, 3], 0).expect("torn");
        drop(wal);
        // after a restart, a write lands in the log; a second crash must replay it
        let live = loop {
            match Embedded::open(&path) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        live.create("/b", b"2".to_vec()).await.expect("create");
        let crashed = tempfile::tempdir().expect("tempdir");
        for f in ["db", "db.wal"] {
            std::fs::copy(dir.path().join(f), crashed.path().join(f)).expect("copy");
        }
        let recovered = Embedded::open(&crashed.path().join("db")).expect("open");
        assert!(recovered.get("/a").await.expect("get").is_some());
        assert!(
            recovered.get("/b").await.expect("get").is_some(),
            "the write after the torn tail survives"
        );
    }
}
