//! The write-ahead log of the embedded backend: each batch of writes is appended as checksummed
//! records and made durable with one `fdatasync`, which costs a fraction of a database commit.
//! The database is brought up to date in larger checkpoints, after which the log is emptied.
//! On start, records newer than the database's revision are replayed; a torn record at the end
//! (a batch that was never acknowledged) ends the replay.
//!
//! Record: `len u32 | crc32 u32 | payload`, payload: `revision u64 | create_revision u64 |
//! kind u8 (0 put, 1 delete) | key_len u32 | key | value`.
//!
//! The file is preallocated, so that an append does not change its size and `fdatasync` has
//! no metadata to write; the log ends at the first record that does not check out (zeros of the
//! preallocation, or a torn write), and the file is cut there on open so that new records
//! never follow garbage.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::fcntl::{FallocateFlags, fallocate};

use crate::{Error, Event, EventType, KeyValue, Result};

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// The largest record a log holds (a value is at most a few MiB).
const MAX_RECORD: usize = 64 << 20;

/// How much room the log file is given ahead of its records.
const PREALLOCATE: i64 = 64 << 20;

/// An open log file.
pub struct Wal {
    file: File,
    /// The end of the last complete record: where the next batch goes.
    size: u64,
}

/// One replayed change.
pub struct Record {
    /// Put or delete.
    pub kind: EventType,
    /// The key's state after the change (for a delete, the key with an empty value).
    pub kv: KeyValue,
}

fn encode(e: &Event, out: &mut Vec<u8>) {
    let key = e.kv.key.as_bytes();
    let value: &[u8] = match e.kind {
        EventType::Put => &e.kv.value,
        EventType::Delete => &[],
    };
    let mut payload = Vec::with_capacity(21 + key.len() + value.len());
    payload.extend_from_slice(&e.kv.mod_revision.to_le_bytes());
    payload.extend_from_slice(&e.kv.create_revision.to_le_bytes());
    payload.push(match e.kind {
        EventType::Put => 0,
        EventType::Delete => 1,
    });
    payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
    payload.extend_from_slice(key);
    payload.extend_from_slice(value);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

fn decode(payload: &[u8]) -> Option<Record> {
    let word = |at: usize| {
        payload
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let mod_revision = word(0)?;
    let create_revision = word(8)?;
    let kind = match payload.get(16)? {
        0 => EventType::Put,
        1 => EventType::Delete,
        _ => return None,
    };
    let key_len = u32::from_le_bytes(payload.get(17..21)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(payload.get(21..21 + key_len)?)
        .ok()?
        .to_string();
    let value = payload.get(21 + key_len..)?;
    Some(Record {
        kind,
        kv: KeyValue {
            key,
            value: value.into(),
            create_revision,
            mod_revision,
        },
    })
}

impl Wal {
    /// Opens the log at `path` and returns it with the complete records it holds.
    pub fn open(path: &Path) -> Result<(Self, Vec<Record>)> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(storage)?;
        // read record by record: the preallocated tail is never read into memory
        let mut reader = std::io::BufReader::new(&mut file);
        let mut records = Vec::new();
        let mut at = 0;
        let mut header = [0u8; 8];
        while reader.read_exact(&mut header).is_ok() {
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if len == 0 || len > MAX_RECORD {
                break;
            }
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
                break;
            }
            let Some(record) = decode(&payload) else {
                break;
            };
            records.push(record);
            at += 8 + len;
        }
        let mut wal = Self {
            file,
            size: at as u64,
        };
        wal.reset_to(at as u64)?;
        Ok((wal, records))
    }

    /// Cuts the file at `end` and preallocates room after it.
    fn reset_to(&mut self, end: u64) -> Result<()> {
        self.file.set_len(end).map_err(storage)?;
        // not every filesystem can preallocate; appends then simply grow the file
        let _ = fallocate(&self.file, FallocateFlags::empty(), end as i64, PREALLOCATE);
        self.file.sync_all().map_err(storage)?;
        self.size = end;
        Ok(())
    }

    /// Appends a batch of changes and makes it durable.
    pub fn append(&mut self, events: &[&Event]) -> Result<()> {
        let mut buf = Vec::new();
        for e in events {
            encode(e, &mut buf);
        }
        let result = self
            .file
            .write_all_at(&buf, self.size)
            .and_then(|_| self.file.sync_data());
        match result {
            Ok(()) => {
                self.size += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // the next batch overwrites this partial one, so no garbage precedes it
                Err(storage(format!("cannot write the write-ahead log: {e}")))
            }
        }
    }

    /// Empties the log once its records are in the database.
    pub fn truncate(&mut self) -> Result<()> {
        self.reset_to(0)
    }

    /// The log's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}
