//! The restart back-off of crashing containers, as kubelet's (client-go's `flowcontrol.Backoff`):
//! the first restart is immediate, then 10 s, doubling to at most 5 min; a container that has
//! not needed a restart for twice the maximum (10 min) starts again from the beginning.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

/// Back-off entries by key (pod uid and container name).
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

struct Entry {
    delay: Duration,
    last_update: DateTime<Utc>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::seconds(10), Duration::seconds(300))
    }
}

impl Backoff {
    /// A back-off from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            entries: HashMap::new(),
        }
    }

    fn expired(&self, at: DateTime<Utc>, last_update: DateTime<Utc>) -> bool {
        at - last_update > self.max * 2
    }

    /// Whether a container that finished at `finished` must still wait at `now`; returns how
    /// long it waits in all when it must.
    pub fn in_backoff(
        &self,
        key: &str,
        finished: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        if self.expired(now, entry.last_update) {
            return None;
        }
        (now - finished < entry.delay).then_some(entry.delay)
    }

    /// Whether a key must still wait at `now` since its last [`Backoff::next`] (client-go's
    /// `IsInBackOffSinceUpdate`, as image pulls use it); returns how long it waits in all.
    pub fn in_backoff_since_update(&self, key: &str, now: DateTime<Utc>) -> Option<Duration> {
        let last_update = self.entries.get(key)?.last_update;
        self.in_backoff(key, last_update, now)
    }

    /// Records a restart at `now`: the next one waits longer.
    pub fn next(&mut self, key: &str, now: DateTime<Utc>) {
        let delay = match self.entries.get(key) {
            Some(e) if !self.expired(now, e.last_update) => (e.delay * 2).min(self.max),
            _ => self.initial,
        };
        self.entries.insert(
            key.to_string(),
            Entry {
                delay,
                last_update: now,
            },
        );
    }

    /// Forgets a key (its pod is gone).
    pub fn forget_prefix(&mut self, prefix: &str) {
        self.entries.retain(|k, _| !k.starts_with(prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_wait_from_their_last_failure() {
        let mut b = Backoff::default();
        let t0 = Utc::now();
        assert_eq!(b.in_backoff_since_update("p", t0), None);
        b.next("p", t0);
        let later = |s| t0 + Duration::seconds(s);
        assert_eq!(
            b.in_backoff_since_update("p", later(9)),
            Some(Duration::seconds(10))
        );
        assert_eq!(
            b.in_backoff_since_update("p", later(11)),
            None,
            "tried again"
        );
        b.next("p", later(11));
        assert!(b.in_backoff_since_update("p", later(30)).is_some());
        assert_eq!(b.in_backoff_since_update("p", later(32)), None);
    }

    #[test]
    fn first_restart_is_immediate_then_the_wait_doubles_to_five_minutes() {
        let mut b = Backoff::default();
        let t0 = Utc::now();
        assert_eq!(
            b.in_backoff("c", t0, t0),
            None,
            "first crash restarts at once"
        );
        b.next("c", t0);
        let t1 = t0 + Duration::seconds(1);
        assert_eq!(b.in_backoff("c", t1, t1), Some(Duration::seconds(10)));
        assert_eq!(b.in_backoff("c", t1, t1 + Duration::seconds(11)), None);
        let mut t = t1 + Duration::seconds(11);
        let mut waits = vec![];
        for _ in 0..7 {
            b.next("c", t);
            let d = b.in_backoff("c", t, t).expect("waits");
            waits.push(d.num_seconds());
            t += d;
        }
        assert_eq!(waits, [20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn ten_quiet_minutes_reset_it() {
        let mut b = Backoff::default();
        let t0 = Utc::now();
        for i in 0..5 {
            b.next("c", t0 + Duration::seconds(i));
        }
        let later = t0 + Duration::minutes(11);
        assert_eq!(b.in_backoff("c", later, later), None);
        b.next("c", later);
        assert_eq!(b.in_backoff("c", later, later), Some(Duration::seconds(10)));
    }
}
