//! Container logs as `kubectl logs` reads them: the CRI log files of a container's current (or
//! `previous`) attempt, with `tailLines`, `sinceSeconds`/`sinceTime`, `limitBytes`, `timestamps`
//! and `follow` (new lines streamed until the container ends).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runtime::cri_log;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::Agent;

/// What `kubectl logs` asked for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Options {
    /// The previous attempt instead of the current one.
    pub previous: bool,
    /// Keep streaming.
    pub follow: bool,
    /// Prefix each line with its time.
    pub timestamps: bool,
    /// Only the last lines.
    pub tail_lines: Option<usize>,
    /// Only lines newer than this.
    pub since: Option<DateTime<Utc>>,
    /// At most this many bytes.
    pub limit_bytes: Option<usize>,
}

impl Options {
    /// Reads the query of a log request.
    pub fn from_query(q: &HashMap<String, String>, now: DateTime<Utc>) -> Result<Self, String> {
        let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
        let number = |k: &str| -> Result<Option<i64>, String> {
            q.get(k)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("{k}: {v:?} is not a number"))
                })
                .transpose()
        };
        let since = match (number("sinceSeconds")?, q.get("sinceTime")) {
            (Some(s), _) => Some(now - chrono::Duration::seconds(s)),
            (None, Some(t)) => Some(
                DateTime::parse_from_rfc3339(t)
                    .map_err(|_| format!("sinceTime: {t:?} is not an RFC 3339 time"))?
                    .with_timezone(&Utc),
            ),
            (None, None) => None,
        };
        Ok(Self {
            previous: flag("previous"),
            follow: flag("follow"),
            timestamps: flag("timestamps"),
            tail_lines: number("tailLines")?.map(|n| n.max(0) as usize),
            since,
            limit_bytes: number("limitBytes")?.map(|n| n.max(0) as usize),
        })
    }
}

/// Turns CRI records into the lines a user reads, joining partial records.
pub fn render(raw: &[u8], opts: &Options) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for record in raw.split(|&b| b == b'\n').filter_map(cri_log::parse) {
        if let Some(since) = opts.since
            && DateTime::parse_from_rfc3339(record.time).is_ok_and(|t| t < since)
        {
            continue;
        }
        let line = current.get_or_insert_with(|| {
            let mut l = Vec::new();
            if opts.timestamps {
                l.extend_from_slice(record.time.as_bytes());
                l.push(b' ');
            }
            l
        });
        line.extend_from_slice(record.content);
        if !record.partial {
            let mut done = current.take().unwrap_or_default();
            done.push(b'\n');
            lines.push(done);
        }
    }
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out: Vec<u8> = lines.concat();
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    out
}

impl Agent {
    /// The uid of the pod `namespace/name` on this node.
    pub fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.pods
            .lock()
            .ok()?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The id of the running attempt of a container, or why there is none.
    pub fn running_container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<String, String> {
        let uid = self
            .pod_uid(namespace, pod)
            .ok_or_else(|| format!("pod {pod:?} is not running on this node"))?;
        let mut attempts = self.attempts(&uid, container);
        match attempts.pop() {
            Some((_, c)) if matches!(c.state, runtime::container::State::Running(_)) => Ok(c.id),
            _ => Err(format!(
                "container {container:?} in pod {pod:?} is not running"
            )),
        }
    }

    /// The attempts of a container of a pod, oldest first.
    pub fn attempts(
        &self,
        uid: &str,
        container: &str,
    ) -> Vec<(i32, runtime::container::Container)> {
        use crate::worker::label;
        let mut out: Vec<(i32, runtime::container::Container)> = self
            .runtime
            .list()
            .unwrap_or_default()
            .into_iter()
            // Init and regular containers share one namespace of names.
            .filter(|c| {
                let label = |k: &str| c.config.labels.get(k).map(String::as_str);
                label(label::POD_UID) == Some(uid) && label(label::CONTAINER) == Some(container)
            })
            .map(|c| {
                let attempt = c
                    .config
                    .labels
                    .get(label::ATTEMPT)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                (attempt, c)
            })
            .collect();
        out.sort_by_key(|(a, _)| *a);
        out
    }
}

/// The log of a container as a streaming body, or why it cannot be read.
pub async fn stream(
    agent: Arc<Agent>,
    namespace: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, String>,
) -> Result<Body, String> {
    let opts = Options::from_query(q, Utc::now())?;
    let uid = agent
        .pod_uid(namespace, pod)
        .ok_or_else(|| format!("pod {pod:?} is not running on this node"))?;
    let (a, uid2, name) = (agent.clone(), uid.clone(), container.to_string());
    let mut attempts = tokio::task::spawn_blocking(move || a.attempts(&uid2, &name))
        .await
        .map_err(|e| e.to_string())?;
    if opts.previous {
        attempts.pop();
    }
    let Some((_, chosen)) = attempts.pop() else {
        return Err(if opts.previous {
            format!("previous terminated container {container:?} in pod {pod:?} not found")
        } else {
            format!("container {container:?} in pod {pod:?} is waiting to start: ContainerCreating")
        });
    };
    let path: PathBuf = chosen.config.log_path.clone();
    let raw = tokio::fs::read(&path).await.unwrap_or_default();
    let first = render(&raw, &opts);
    if !opts.follow || opts.previous {
        return Ok(Body::from(first));
    }
    let follow_opts = Options {
        tail_lines: None,
        limit_bytes: None,
        since: None,
        ..opts
    };
    let records = follow(
        agent,
        chosen.id.clone(),
        path,
        raw.len() as u64,
        Duration::from_millis(100),
    );
    let first = futures::stream::once(async move { Bytes::from(first) });
    let rest = futures::stream::unfold(records, move |mut rx| {
        let opts = follow_opts.clone();
        async move {
            rx.recv()
                .await
                .map(|chunk| (Bytes::from(render(&chunk, &opts)), rx))
        }
    });
    Ok(Body::from_stream(
        first.chain(rest).map(Ok::<_, std::convert::Infallible>),
    ))
}

/// Whole CRI records appended to a container's log from `offset` on, as they come, until the
/// container stops running or the receiver is dropped, looking every `every`; a rotation starts
/// over at the new file.
pub fn follow(
    agent: Arc<Agent>,
    id: String,
    path: PathBuf,
    mut offset: u64,
    every: Duration,
) -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let ended = !matches!(
                agent.runtime.get(&id).map(|c| c.state),
                Ok(runtime::container::State::Running(_))
            );
            if let Ok(mut f) = tokio::fs::File::open(&path).await {
                // A file shorter than what was read has been rotated: read the new one whole.
                if f.metadata().await.is_ok_and(|m| m.len() < offset) {
                    offset = 0;
                }
                let mut buf = Vec::new();
                if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
                    && let Ok(n) = f.read_to_end(&mut buf).await
                {
                    offset += n as u64;
                    pending.extend_from_slice(&buf);
                }
            }
            // Only whole records go out; a record being written waits for the next round.
            if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                let chunk: Vec<u8> = pending.drain(..=end).collect();
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            if ended || tx.is_closed() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Vec<u8> {
        let mut raw = Vec::new();
        cri_log::push_line(
            &mut raw,
            "2026-01-01T00:00:01.000000001Z",
            "stdout",
            false,
            b"one",
        );
        cri_log::push_line(&mut raw, "2026-01-01T00:00:02Z", "stderr", true, b"tw");
        cri_log::push_line(&mut raw, "2026-01-01T00:00:02Z", "stderr", false, b"o");
        cri_log::push_line(&mut raw, "2026-01-01T00:00:03Z", "stdout", false, b"three");
        raw
    }

    #[test]
    fn lines_are_joined_tailed_and_timestamped() {
        assert_eq!(render(&log(), &Options::default()), b"one\ntwo\nthree\n");
        let tail = Options {
            tail_lines: Some(1),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(render(&log(), &tail), b"2026-01-01T00:00:03Z three\n");
        let since = Options {
            since: Some("2026-01-01T00:00:02Z".parse().expect("time")),
            ..Default::default()
        };
        assert_eq!(render(&log(), &since), b"two\nthree\n");
        let limit = Options {
            limit_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(render(&log(), &limit), b"one\nt");
    }

    #[test]
    fn options_come_from_the_query() {
        let q: HashMap<String, String> = [
            ("tailLines", "3"),
            ("follow", "true"),
            ("sinceSeconds", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let now = Utc::now();
        let o = Options::from_query(&q, now).expect("options");
        assert_eq!(o.tail_lines, Some(3));
        assert!(o.follow);
        assert_eq!(o.since, Some(now - chrono::Duration::seconds(10)));
        let bad: HashMap<String, String> = [("tailLines".to_string(), "x".to_string())].into();
        assert!(Options::from_query(&bad, now).is_err());
    }
}
