//! The write-ahead log of the embedded backend: each batch of writes is appended as checksummed
//! records and made durable with one `fdatasync`, which costs a fraction of a database commit.
//! The database is brought up to date in larger checkpoints, after which the log is emptied.
//! On start, records newer than the database's revision are replayed; a torn record at the end
//! (a batch that was never acknowledged) ends the replay.
//!
//! Record: `len u32 | crc32 u32 | payload`, payload: `revision u64 | create_revision u64 |
//! kind u8 (0 put, 1 delete) | key_len u32 | key | value`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use crate::{Error, Event, EventType, KeyValue, Result};

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// An open log file.
pub struct Wal {
    file: File,
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
            .append(true)
            .open(path)
            .map_err(storage)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(storage)?;
        let mut records = Vec::new();
        let mut at = 0;
        while let Some(header) = bytes.get(at..at + 8) {
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
                break;
            };
            if crc32fast::hash(payload) != crc {
                break;
            }
            let Some(record) = decode(payload) else { break };
            records.push(record);
            at += 8 + len;
        }
        Ok((
            Self {
                file,
                size: bytes.len() as u64,
            },
            records,
        ))
    }

    /// Appends a batch of changes and makes it durable.
    pub fn append(&mut self, events: &[&Event]) -> Result<()> {
        let mut buf = Vec::new();
        for e in events {
            encode(e, &mut buf);
        }
        let result = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        match result {
            Ok(()) => {
                self.size += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // drop a partial batch so that later batches follow complete records
                let _ = self.file.set_len(self.size);
                Err(storage(format!("cannot write the write-ahead log: {e}")))
            }
        }
    }

    /// Empties the log once its records are in the database.
    pub fn truncate(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(storage)?;
        self.file.sync_data().map_err(storage)?;
        self.size = 0;
        Ok(())
    }

    /// The log's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}
