//! Container logs in the CRI format kubelet and containerd write, one record a line:
//! `<RFC 3339 nano time> <stdout|stderr> <F|P> <content>`, where `P` marks a partial line
//! (a long line split in pieces) and `F` the last piece of one.

/// The longest piece of a line written as one record.
const MAX_PIECE: usize = 16 * 1024;

/// Appends one record.
pub fn push_line(out: &mut Vec<u8>, time: &str, stream: &str, partial: bool, content: &[u8]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Moves every complete line (and pieces of over-long ones) from `pending` into records.
pub fn drain_lines(pending: &mut Vec<u8>, stream: &str, time: &str, out: &mut Vec<u8>) {
    let mut start = 0;
    while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
        let line = &pending[start..start + nl];
        for (i, piece) in line.chunks(MAX_PIECE).enumerate() {
            let last = (i + 1) * MAX_PIECE >= line.len();
            push_line(out, time, stream, !last, piece);
        }
        if line.is_empty() {
            push_line(out, time, stream, false, b"");
        }
        start += nl + 1;
    }
    while pending.len() - start > MAX_PIECE {
        push_line(out, time, stream, true, &pending[start..start + MAX_PIECE]);
        start += MAX_PIECE;
    }
    pending.drain(..start);
}

/// One record read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    /// When it was written.
    pub time: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// Whether more of the same line follows.
    pub partial: bool,
    /// The content, without the newline.
    pub content: &'a [u8],
}

/// Parses one record (a line without its newline).
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stream,
        partial: tag == b"P",
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_become_records_and_the_rest_waits() {
        let mut pending = b"one\ntwo\nthr".to_vec();
        let mut out = Vec::new();
        drain_lines(&mut pending, "stdout", "T", &mut out);
        assert_eq!(out, b"T stdout F one\nT stdout F two\n");
        assert_eq!(pending, b"thr");
    }

    #[test]
    fn long_lines_are_split_into_partial_records() {
        let mut pending = vec![b'x'; MAX_PIECE + 10];
        pending.push(b'\n');
        let mut out = Vec::new();
        drain_lines(&mut pending, "stderr", "T", &mut out);
        let records: Vec<_> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse(l).expect("test"))
            .collect();
        assert_eq!(records.len(), 2);
        assert!(records[0].partial && !records[1].partial);
        assert_eq!(records[1].content.len(), 10);
        assert!(pending.is_empty());
    }

    #[test]
    fn parse_reads_what_push_wrote() {
        let mut out = Vec::new();
        push_line(
            &mut out,
            "2026-01-01T00:00:00.1Z",
            "stdout",
            false,
            b"a b c",
        );
        let r = parse(&out[..out.len() - 1]).expect("test");
        assert_eq!(r.stream, "stdout");
        assert_eq!(r.content, b"a b c");
        assert!(!r.partial);
    }
}
