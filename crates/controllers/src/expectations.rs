//! Expectations: what a controller has created or deleted that its cache has not shown yet.
//! Without them a reconcile that runs before the watch delivers its own writes would create or
//! delete the same pods again (upstream's `ControllerExpectations`, here by name rather than by
//! count so that each write is forgotten exactly when it is seen).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a write is waited for before the cache is trusted again (upstream: 5 minutes).
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Pending {
    /// Names of objects created, not yet in the cache.
    creates: HashMap<String, Instant>,
    /// UIDs of objects deleted, still in the cache without a deletion timestamp.
    deletes: HashMap<String, Instant>,
}

/// Outstanding writes per owner (its namespace/name).
#[derive(Default)]
pub struct Expectations {
    owners: Mutex<HashMap<String, Pending>>,
}

/// What the cache does not show yet, after forgetting what it now shows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outstanding {
    /// Names created and not yet seen.
    pub creates: Vec<String>,
    /// UIDs deleted and still seen as live.
    pub deletes: Vec<String>,
}

impl Expectations {
    /// Records that an object named `name` was created for `owner`.
    pub fn created(&self, owner: &str, name: &str) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let pending = owners.entry(owner.to_string()).or_default();
        pending.creates.insert(name.to_string(), Instant::now());
    }

    /// Records that the object with `uid` was deleted for `owner`.
    pub fn deleted(&self, owner: &str, uid: &str) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let pending = owners.entry(owner.to_string()).or_default();
        pending.deletes.insert(uid.to_string(), Instant::now());
    }

    /// Forgets the writes the cache now reflects (`seen` tells whether a name is cached;
    /// `live` whether a UID is cached without a deletion timestamp) or that timed out, and
    /// returns the rest.
    pub fn outstanding(
        &self,
        owner: &str,
        seen: impl Fn(&str) -> bool,
        live: impl Fn(&str) -> bool,
    ) -> Outstanding {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pending) = owners.get_mut(owner) else {
            return Outstanding::default();
        };
        pending
            .creates
            .retain(|name, at| at.elapsed() < TIMEOUT && !seen(name));
        pending
            .deletes
            .retain(|uid, at| at.elapsed() < TIMEOUT && live(uid));
        let out = Outstanding {
            creates: pending.creates.keys().cloned().collect(),
            deletes: pending.deletes.keys().cloned().collect(),
        };
        if pending.creates.is_empty() && pending.deletes.is_empty() {
            owners.remove(owner);
        }
        out
    }

    /// Forgets an owner that is gone.
    pub fn forget(&self, owner: &str) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_outstanding_until_the_cache_shows_them() {
        let e = Expectations::default();
        e.created("ns/rs", "rs-abcde");
        e.deleted("ns/rs", "uid-1");
        let out = e.outstanding("ns/rs", |_| false, |_| true);
        assert_eq!(out.creates, vec!["rs-abcde".to_string()]);
        assert_eq!(out.deletes, vec!["uid-1".to_string()]);
        let out = e.outstanding("ns/rs", |n| n == "rs-abcde", |_| true);
        assert!(out.creates.is_empty());
        assert_eq!(out.deletes.len(), 1);
        let out = e.outstanding("ns/rs", |_| false, |_| false);
        assert_eq!(out, Outstanding::default());
        assert!(e.owners.lock().expect("lock").is_empty());
    }
}
