//! The part of SPDY/3.1 that `kubectl port-forward` speaks (no crate provides it): frames of a
//! byte stream, streams opened by the client with SYN_STREAM and answered with SYN_REPLY, data
//! frames with FIN, RST_STREAM, PING, GOAWAY, and WINDOW_UPDATE so that the client's send
//! windows stay open. Header blocks are zlib-compressed with the SPDY/3 dictionary, one
//! compression context per direction for the whole session.

use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The zlib dictionary of SPDY/3 header blocks (from the SPDY/3 specification).
const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const WINDOW_UPDATE: u16 = 9;
/// The FIN flag of data frames and SYN frames.
pub const FLAG_FIN: u8 = 1;
/// The largest frame accepted (16 MiB, the 24-bit length's limit).
const MAX_FRAME: usize = (1 << 24) - 1;

/// A frame read from the client.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A new stream, with its headers.
    SynStream {
        /// Its id.
        stream_id: u32,
        /// Its headers (names lowercase).
        headers: Vec<(String, String)>,
        /// Whether the client will send nothing on it.
        fin: bool,
    },
    /// Data on a stream.
    Data {
        /// The stream.
        stream_id: u32,
        /// The bytes.
        data: Vec<u8>,
        /// Whether the client is done sending on it.
        fin: bool,
    },
    /// The client abandoned a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
    },
    /// A ping to answer.
    Ping(u32),
    /// The client ends the session.
    GoAway,
    /// Anything else (SETTINGS, WINDOW_UPDATE, HEADERS...), which needs no answer.
    Other,
}

/// Reads frames, decompressing header blocks.
pub struct Reader<R> {
    inner: R,
    inflate: Decompress,
}

/// Writes frames, compressing header blocks.
pub struct Writer {
    deflate: Compress,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Frames of the session on `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            inflate: Decompress::new(true),
        }
    }

    /// The next frame; `None` once the client closed the connection.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.inner.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(bad("frame too large"));
        }
        let mut body = vec![0u8; len];
        self.inner.read_exact(&mut body).await?;
        let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: word(&head[..4]),
                data: body,
                fin: flags & FLAG_FIN != 0,
            }));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(match kind {
            SYN_STREAM if body.len() >= 10 => {
                let raw = self.inflate_block(&body[10..])?;
                Frame::SynStream {
                    stream_id: word(&body[..4]),
                    headers: parse_headers(&raw)?,
                    fin: flags & FLAG_FIN != 0,
                }
            }
            RST_STREAM if body.len() >= 4 => Frame::RstStream {
                stream_id: word(&body[..4]),
            },
            PING if body.len() >= 4 => Frame::Ping(word(&body[..4])),
            GOAWAY => Frame::GoAway,
            _ => Frame::Other,
        }))
    }

    fn inflate_block(&mut self, input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut consumed = 0;
        loop {
            let before_in = self.inflate.total_in();
            out.reserve(1024);
            match self
                .inflate
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|_| bad("header dictionary refused"))?;
                }
                Err(_) => return Err(bad("corrupt header block")),
            }
            consumed += (self.inflate.total_in() - before_in) as usize;
            if consumed >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() > MAX_FRAME {
                return Err(bad("header block too large"));
            }
        }
    }
}

fn parse_headers(raw: &[u8]) -> io::Result<Vec<(String, String)>> {
    let mut pos = 0;
    let mut take = |n: usize| -> io::Result<&[u8]> {
        let s = raw
            .get(pos..pos + n)
            .ok_or_else(|| bad("short header block"))?;
        pos += n;
        Ok(s)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("count"))?);
    let mut out = Vec::new();
    for _ in 0..count {
        let n = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("name"))?) as usize;
        let name = String::from_utf8_lossy(take(n)?).to_lowercase();
        let v = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("value"))?) as usize;
        let value = String::from_utf8_lossy(take(v)?).into_owned();
        out.push((name, value));
    }
    Ok(out)
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// A writer with a fresh compression context.
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        let _ = deflate.set_dictionary(DICTIONARY);
        Self { deflate }
    }

    fn deflate_block(&mut self, raw: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut consumed = 0;
        loop {
            let before = self.deflate.total_in();
            out.reserve(256);
            self.deflate
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|_| bad("header compression failed"))?;
            consumed += (self.deflate.total_in() - before) as usize;
            if consumed >= raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// The SYN_REPLY accepting stream `stream_id`.
    pub fn syn_reply(&mut self, stream_id: u32, headers: &[(&str, &str)]) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (n, v) in headers {
            raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
            raw.extend_from_slice(n.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut body = stream_id.to_be_bytes().to_vec();
        body.extend_from_slice(&self.deflate_block(&raw)?);
        Ok(control(SYN_REPLY, 0, &body))
    }
}

/// A data frame.
pub fn data(stream_id: u32, payload: &[u8], fin: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// The answer to a PING.
pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

/// A RST_STREAM (status 5: cancel).
pub fn rst_stream(stream_id: u32) -> Vec<u8> {
    let mut body = stream_id.to_be_bytes().to_vec();
    body.extend_from_slice(&5u32.to_be_bytes());
    control(RST_STREAM, 0, &body)
}

/// A WINDOW_UPDATE giving the client `delta` more bytes on a stream (0: the whole session).
pub fn window_update(stream_id: u32, delta: u32) -> Vec<u8> {
    let mut body = stream_id.to_be_bytes().to_vec();
    body.extend_from_slice(&delta.to_be_bytes());
    control(WINDOW_UPDATE, 0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN_STREAM as a client sends it, compressed with a client-side context.
    fn syn_stream(client: &mut Writer, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        // The reply encoder writes the same header block format; reuse it and patch the frame.
        let reply = client.syn_reply(id, headers).expect("encode");
        let block = &reply[12..];
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&0u32.to_be_bytes()); // associated stream
        body.extend_from_slice(&[0, 0]); // priority, slot
        body.extend_from_slice(block);
        control(SYN_STREAM, 0, &body)
    }

    #[tokio::test]
    async fn frames_round_trip_with_compressed_headers_across_streams() {
        let mut client = Writer::new();
        let mut wire = Vec::new();
        wire.extend(syn_stream(
            &mut client,
            1,
            &[
                ("streamType", "error"),
                ("port", "8080"),
                ("requestID", "0"),
            ],
        ));
        wire.extend(syn_stream(
            &mut client,
            3,
            &[("streamType", "data"), ("port", "8080"), ("requestID", "0")],
        ));
        wire.extend(data(3, b"GET / HTTP/1.0\r\n\r\n", true));
        wire.extend(ping(7));
        let mut reader = Reader::new(&wire[..]);
        match reader.next().await.expect("frame") {
            Some(Frame::SynStream {
                stream_id: 1,
                headers,
                fin: false,
            }) => {
                assert!(headers.contains(&("streamtype".into(), "error".into())));
            }
            other => panic!("unexpected {other:?}"),
        }
        match reader.next().await.expect("frame") {
            Some(Frame::SynStream {
                stream_id: 3,
                headers,
                ..
            }) => {
                assert!(headers.contains(&("requestid".into(), "0".into())));
                assert!(headers.contains(&("streamtype".into(), "data".into())));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            reader.next().await.expect("frame"),
            Some(Frame::Data {
                stream_id: 3,
                data: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                fin: true
            })
        );
        assert_eq!(reader.next().await.expect("frame"), Some(Frame::Ping(7)));
        assert_eq!(reader.next().await.expect("frame"), None);
    }
}
