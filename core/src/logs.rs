//! Streamed instance logs (`GET /api/service/<id>/instance/<n>/logs`), in domain terms: what
//! the root asks of the worker holding an instance, through its cluster, and the chunks that
//! come back. The same four messages cross both links (gRPC between root and cluster, MQTT
//! between cluster and worker; wire forms in `canopy-proto`).
//!
//! Flow control is by credit: the worker sends at most `window` chunks beyond those the root
//! has taken; the root grants more ([`LogCredit`]) as its HTTP client reads, so a slow reader
//! slows the worker down instead of filling any queue on the way. Chunks are numbered from 0
//! and every hop checks they come in order, so a lost chunk ends the stream with an error
//! instead of leaving a silent gap. The first chunk (possibly empty) says the stream opened.
//!
//! The pure pieces the worker needs ([`tail_start`], [`chunk_end`]) are here too.

use crate::ids::{InstanceNumber, ServiceId};
use serde::{Deserialize, Serialize};

/// The largest chunk a worker sends, in bytes.
pub const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks in flight before the worker waits for credit.
pub const WINDOW: u32 = 8;

/// Open a stream of one instance's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogOpen {
    /// Chosen by the root, unique among its open streams.
    pub stream: u64,
    pub service: ServiceId,
    pub instance: InstanceNumber,
    /// Start this many lines before the end; `None`: from the beginning.
    pub tail_lines: Option<u32>,
    /// Keep the stream open and send what the instance writes from now on.
    pub follow: bool,
    /// Send at most this many bytes in all, then end the stream.
    pub limit_bytes: u64,
    /// Chunks the worker may send before its first credit.
    pub window: u32,
}

/// The reader took `chunks` more chunks: the worker may send as many more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCredit {
    pub stream: u64,
    pub chunks: u32,
}

/// The reader went away: stop sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogClose {
    pub stream: u64,
}

/// Part of a log, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub stream: u64,
    /// 0 for the first chunk of the stream, then one more for each.
    pub seq: u64,
    pub data: Vec<u8>,
    /// The last chunk of the stream.
    pub end: bool,
    /// Why the stream ended early (with `end`): the instance is not there, the worker was lost,
    /// the size limit was reached.
    pub error: Option<String>,
}

impl LogChunk {
    /// The last chunk, ending the stream for `why`.
    pub fn failed(stream: u64, seq: u64, why: impl Into<String>) -> LogChunk {
        LogChunk {
            stream,
            seq,
            data: Vec::new(),
            end: true,
            error: Some(why.into()),
        }
    }
}

/// Where the last `lines` lines of `text` start (a final line without a newline counts as a
/// line; the newline ending the text does not start another). `text` is the end of a file:
/// `None` when it holds fewer lines than asked, so the reader must look further back.
pub fn tail_start(text: &[u8], lines: u32) -> Option<usize> {
    if lines == 0 {
        return Some(text.len());
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return Some(i + 1);
            }
        }
    }
    None
}

/// How much of `buf` to send as one chunk: up to its last newline when it has one, else up to
/// the last complete UTF-8 character (so a chunk never splits a line's character), else all.
/// `at_end`: nothing follows `buf` yet (what there is goes out whole).
pub fn chunk_end(buf: &[u8], at_end: bool) -> usize {
    if at_end || buf.is_empty() {
        return buf.len();
    }
    if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
        return i + 1;
    }
    // Back off at most three continuation bytes to the start of an incomplete character.
    let tail = buf.len().saturating_sub(3);
    for i in (tail..buf.len()).rev() {
        let b = buf[i];
        if b & 0xC0 != 0x80 {
            let need = match b {
                0x00..=0x7F => 1,
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            return if buf.len() - i >= need { buf.len() } else { i };
        }
    }
    buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_start_finds_the_last_lines() {
        let t = b"a\nb\nc\n";
        assert_eq!(tail_start(t, 1), Some(4));
        assert_eq!(tail_start(t, 2), Some(2));
        assert_eq!(tail_start(t, 3), None, "the first line may go on before");
        assert_eq!(tail_start(t, 0), Some(6));
        assert_eq!(
            tail_start(b"a\nb", 1),
            Some(2),
            "a last line without newline"
        );
        assert_eq!(tail_start(b"", 1), None);
    }

    #[test]
    fn chunks_end_at_lines_or_whole_characters() {
        assert_eq!(chunk_end(b"one\ntwo", false), 4);
        assert_eq!(chunk_end(b"one\ntwo", true), 7);
        assert_eq!(chunk_end(b"abc", false), 3);
        let e = "é".as_bytes(); // two bytes
        assert_eq!(chunk_end(&[b'a', e[0]], false), 1, "half a character waits");
        assert_eq!(chunk_end(&[b'a', e[0], e[1]], false), 3);
        let euro = "€".as_bytes(); // three bytes
        assert_eq!(chunk_end(&[b'a', euro[0], euro[1]], false), 1);
        assert_eq!(
            chunk_end(&[0x80, 0x80, 0x80, 0x80], false),
            4,
            "not UTF-8: all"
        );
    }
}
