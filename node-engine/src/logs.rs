//! Streamed logs on the worker: each `nodes/<id>/logs/open` the cluster relays starts a task
//! that reads the instance's log file from where the request says (the whole file, or the
//! last lines) and sends it in chunks ([`canopy_core::logs`]): at most `window` chunks beyond
//! the credit the reader has granted, at most `limit` bytes in all. With `follow` it goes on
//! sending what the instance writes until the instance is removed (its log file is deleted or
//! replaced) or the reader closes the stream.
//!
//! The chunks come out of one channel; the uplink publishes them on `nodes/<id>/logs/data`.
//! When the uplink's session ends every stream is closed (the cluster ends them for its
//! readers when it loses the worker).

use canopy_core::logs::{CHUNK_BYTES, LogChunk, chunk_end, tail_start};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// How often a followed log is checked for more.
pub const POLL: Duration = Duration::from_millis(100);

/// Streams open at once on one worker; more are refused.
pub const MAX_STREAMS: usize = 64;

/// What one stream is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub stream: u64,
    pub tail_lines: Option<u32>,
    pub follow: bool,
    pub limit: u64,
    pub window: u32,
}

/// The open streams of one session.
pub struct LogStreams {
    /// Each open stream's credit: one permit per chunk it may send.
    open: Arc<Mutex<HashMap<u64, Arc<Semaphore>>>>,
    out: mpsc::UnboundedSender<LogChunk>,
    poll: Duration,
}

impl LogStreams {
    /// The streams, and the channel their chunks come out of.
    pub fn new(poll: Duration) -> (LogStreams, mpsc::UnboundedReceiver<LogChunk>) {
        let (out, rx) = mpsc::unbounded_channel();
        let streams = LogStreams {
            open: Arc::default(),
            out,
            poll,
        };
        (streams, rx)
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Semaphore>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts streaming `log` (`Err`: why there is nothing to stream, sent as the stream's
    /// only chunk).
    pub fn open(&self, req: Request, log: Result<PathBuf, String>) {
        let refuse = |why: String| {
            let _ = self.out.send(LogChunk::failed(req.stream, 0, why));
        };
        let path = match log {
            Ok(p) => p,
            Err(why) => return refuse(why),
        };
        let credit = {
            let mut open = self.open_map();
            if open.contains_key(&req.stream) {
                drop(open);
                return refuse(format!("stream {} is already open", req.stream));
            }
            if open.len() >= MAX_STREAMS {
                drop(open);
                return refuse(format!(
                    "this worker already streams {MAX_STREAMS} logs; try again later"
                ));
            }
            let credit = Arc::new(Semaphore::new(req.window as usize));
            open.insert(req.stream, credit.clone());
            credit
        };
        let open = self.open.clone();
        let out = self.out.clone();
        let poll = self.poll;
        tokio::spawn(async move {
            let stream = req.stream;
            let mut sender = Sender {
                stream,
                seq: 0,
                credit: credit.clone(),
                out,
            };
            if let Err(e) = run(&req, &path, &mut sender, poll).await {
                let _ = sender.send(Vec::new(), true, Some(e)).await;
            }
            open.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&stream);
        });
    }

    /// The reader took more chunks.
    pub fn credit(&self, stream: u64, chunks: u32) {
        if let Some(c) = self.open_map().get(&stream) {
            // A reader cannot grant more than the semaphore holds.
            let room = Semaphore::MAX_PERMITS.saturating_sub(c.available_permits());
            c.add_permits((chunks as usize).min(room));
        }
    }

    /// The reader went away.
    pub fn close(&self, stream: u64) {
        if let Some(c) = self.open_map().remove(&stream) {
            c.close();
        }
    }

    /// Every stream ends (the session that carried them ended).
    pub fn close_all(&self) {
        for (_, c) in self.open_map().drain() {
            c.close();
        }
    }

    /// Streams open now.
    pub fn len(&self) -> usize {
        self.open_map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for LogStreams {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// Why a stream stops sending: its reader closed it.
struct Closed;

struct Sender {
    stream: u64,
    seq: u64,
    credit: Arc<Semaphore>,
    out: mpsc::UnboundedSender<LogChunk>,
}

impl Sender {
    /// Sends one chunk once there is credit for it.
    async fn send(
        &mut self,
        data: Vec<u8>,
        end: bool,
        error: Option<String>,
    ) -> Result<(), Closed> {
        self.credit.acquire().await.map_err(|_| Closed)?.forget();
        let chunk = LogChunk {
            stream: self.stream,
            seq: self.seq,
            data,
            end,
            error,
        };
        self.seq += 1;
        self.out.send(chunk).map_err(|_| Closed)
    }

    fn closed(&self) -> bool {
        self.credit.is_closed()
    }
}

/// The device and inode a path names now (`None`: it names nothing).
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Where the last `lines` lines of `f` start, reading back from its end in blocks.
fn tail_offset(f: &mut std::fs::File, lines: u32) -> std::io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let len = f.metadata()?.len();
    let mut start = len;
    loop {
        start = start.saturating_sub(BLOCK);
        f.seek(SeekFrom::Start(start))?;
        let mut text = Vec::with_capacity((len - start) as usize);
        f.by_ref().take(len - start).read_to_end(&mut text)?;
        if let Some(at) = tail_start(&text, lines) {
            return Ok(start + at as u64);
        }
        if start == 0 {
            return Ok(0);
        }
    }
}

/// Streams one log; `Err` is the reason the stream failed (sent as its last chunk).
async fn run(req: &Request, path: &Path, out: &mut Sender, poll: Duration) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("cannot read the instance's log: {e}");
    // A log that does not exist yet (the instance has written nothing) is empty.
    let mut file = loop {
        match std::fs::File::open(path) {
            Ok(f) => break Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !req.follow {
                    break None;
                }
                // The opening chunk goes out before the wait.
                if out.seq == 0 && out.send(Vec::new(), false, None).await.is_err() {
                    return Ok(());
                }
                tokio::time::sleep(poll).await;
                if out.closed() {
                    return Ok(());
                }
            }
            Err(e) => return Err(failed(e)),
        }
    };
    let Some(f) = file.as_mut() else {
        let _ = out.send(Vec::new(), true, None).await;
        return Ok(());
    };
    let mine = f.metadata().map(|m| (m.dev(), m.ino())).map_err(failed)?;
    let mut offset = match req.tail_lines {
        Some(n) => tail_offset(f, n).map_err(failed)?,
        None => 0,
    };
    if out.seq == 0 && out.send(Vec::new(), false, None).await.is_err() {
        return Ok(());
    }
    let mut sent = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
    loop {
        f.seek(SeekFrom::Start(offset)).map_err(failed)?;
        let want = CHUNK_BYTES - buf.len();
        let before = buf.len();
        f.by_ref()
            .take(want as u64)
            .read_to_end(&mut buf)
            .map_err(failed)?;
        let read = buf.len() - before;
        offset += read as u64;
        let at_end = read < want;
        if !buf.is_empty() {
            let mut cut = chunk_end(&buf, at_end);
            let room = req.limit.saturating_sub(sent);
            let over = cut as u64 > room;
            if over {
                cut = chunk_end(&buf[..room as usize], false);
            }
            if cut > 0 {
                let rest = buf.split_off(cut);
                let data = std::mem::replace(&mut buf, rest);
                sent += data.len() as u64;
                if out.send(data, false, None).await.is_err() {
                    return Ok(());
                }
            }
            if over {
                return Err(format!(
                    "the log goes on: this request's limit of {} bytes is reached",
                    req.limit
                ));
            }
            if !at_end {
                continue;
            }
        }
        // At the end of what is written.
        if !req.follow {
            let _ = out.send(buf, true, None).await;
            return Ok(());
        }
        if identity(path) != Some(mine) {
            // The instance was removed: what it wrote has all been sent.
            let _ = out.send(buf, true, None).await;
            return Ok(());
        }
        tokio::time::sleep(poll).await;
        if out.closed() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn request(stream: u64) -> Request {
        Request {
            stream,
            tail_lines: None,
            follow: false,
            limit: u64::MAX,
            window: 100,
        }
    }

    fn write_lines(path: &Path, from: u32, to: u32) {
        let mut f = crate::runtime::open_log(path).unwrap();
        for i in from..to {
            writeln!(f, "line {i}").unwrap();
        }
    }

    /// Every chunk of `stream` until its end.
    async fn drain(rx: &mut mpsc::UnboundedReceiver<LogChunk>) -> Vec<LogChunk> {
        let mut got = Vec::new();
        loop {
            let c = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a chunk in time")
                .expect("the channel stays open");
            let end = c.end;
            got.push(c);
            if end {
                return got;
            }
        }
    }

    fn text(chunks: &[LogChunk]) -> String {
        String::from_utf8(chunks.iter().flat_map(|c| c.data.clone()).collect()).unwrap()
    }

    #[tokio::test]
    async fn a_whole_log_comes_in_numbered_chunks_that_end_at_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        write_lines(&log, 0, 10_000);
        let (streams, mut rx) = LogStreams::new(POLL);
        streams.open(request(7), Ok(log.clone()));
        let chunks = drain(&mut rx).await;
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!((c.stream, c.seq), (7, i as u64));
            assert!(c.data.len() <= CHUNK_BYTES);
            assert!(c.data.is_empty() || c.data.ends_with(b"\n"), "chunk {i}");
            assert_eq!(c.error, None);
        }
        let want: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text(&chunks), want);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(streams.is_empty(), "a finished stream is forgotten");
    }

    #[tokio::test]
    async fn tail_starts_that_many_lines_before_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        // More than one 64 KiB block back.
        write_lines(&log, 0, 20_000);
        let (streams, mut rx) = LogStreams::new(POLL);
        let tail = |n| Request {
            tail_lines: Some(n),
            ..request(u64::from(n))
        };
        streams.open(tail(3), Ok(log.clone()));
        assert_eq!(
            text(&drain(&mut rx).await),
            "line 19997\nline 19998\nline 19999\n"
        );
        streams.open(tail(15_000), Ok(log.clone()));
        let got = text(&drain(&mut rx).await);
        assert!(got.starts_with("line 5000\n"), "{}", &got[..20]);
        assert_eq!(got.lines().count(), 15_000);
        streams.open(tail(30_000), Ok(log));
        assert_eq!(text(&drain(&mut rx).await).lines().count(), 20_000);
    }

    #[tokio::test]
    async fn no_more_than_the_window_goes_out_before_credit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        write_lines(&log, 0, 50_000); // about 30 chunks
        let (streams, mut rx) = LogStreams::new(POLL);
        streams.open(
            Request {
                window: 3,
                ..request(1)
            },
            Ok(log),
        );
        let settle = || tokio::time::sleep(Duration::from_millis(200));
        settle().await;
        let mut got = Vec::new();
        while let Ok(c) = rx.try_recv() {
            got.push(c);
        }
        assert_eq!(got.len(), 3, "the opening chunk and two of data");
        streams.credit(1, 2);
        settle().await;
        while let Ok(c) = rx.try_recv() {
            got.push(c);
        }
        assert_eq!(got.len(), 5);
        streams.credit(1, 1000);
        got.extend(drain(&mut rx).await);
        let want: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text(&got), want, "nothing lost while waiting");
    }

    #[tokio::test]
    async fn a_limit_ends_the_stream_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        write_lines(&log, 0, 1000);
        let (streams, mut rx) = LogStreams::new(POLL);
        streams.open(
            Request {
                limit: 100,
                ..request(1)
            },
            Ok(log),
        );
        let chunks = drain(&mut rx).await;
        let got = text(&chunks);
        assert!(got.len() <= 100 && got.len() > 80, "{}", got.len());
        assert!(got.ends_with('\n'), "cut at a line");
        let last = chunks.last().unwrap();
        assert!(
            last.error
                .as_deref()
                .unwrap()
                .contains("limit of 100 bytes")
        );
    }

    #[tokio::test]
    async fn following_sends_new_lines_until_the_instance_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        write_lines(&log, 0, 2);
        let (streams, mut rx) = LogStreams::new(Duration::from_millis(10));
        streams.open(
            Request {
                follow: true,
                ..request(1)
            },
            Ok(log.clone()),
        );
        let mut got = Vec::new();
        while text(&got) != "line 0\nline 1\n" {
            got.push(rx.recv().await.unwrap());
        }
        write_lines(&log, 2, 5);
        while text(&got) != "line 0\nline 1\nline 2\nline 3\nline 4\n" {
            let c = rx.recv().await.unwrap();
            assert!(!c.end);
            got.push(c);
        }
        // The engine deletes an instance's log when it removes the instance.
        std::fs::remove_file(&log).unwrap();
        let rest = drain(&mut rx).await;
        assert_eq!(rest.last().unwrap().error, None);
        assert_eq!(text(&rest), "");
    }

    #[tokio::test]
    async fn closing_stops_a_followed_stream() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        write_lines(&log, 0, 1);
        let (streams, mut rx) = LogStreams::new(Duration::from_millis(10));
        streams.open(
            Request {
                follow: true,
                ..request(4)
            },
            Ok(log.clone()),
        );
        rx.recv().await.unwrap();
        assert_eq!(streams.len(), 1);
        streams.close(4);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(streams.is_empty());
        write_lines(&log, 1, 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut after = Vec::new();
        while let Ok(c) = rx.try_recv() {
            after.push(c);
        }
        assert!(!text(&after).contains("line 2"), "nothing after close");
    }

    #[tokio::test]
    async fn refusals_are_the_streams_only_chunk() {
        let (streams, mut rx) = LogStreams::new(POLL);
        streams.open(request(9), Err("no instance x on this worker".into()));
        let c = rx.recv().await.unwrap();
        assert_eq!((c.seq, c.end), (0, true));
        assert_eq!(c.error.as_deref(), Some("no instance x on this worker"));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        write_lines(&log, 0, 1);
        let follow = Request {
            follow: true,
            ..request(2)
        };
        streams.open(follow.clone(), Ok(log.clone()));
        streams.open(follow, Ok(log));
        let mut seen = Vec::new();
        while seen.iter().all(|c: &LogChunk| c.error.is_none()) {
            seen.push(rx.recv().await.unwrap());
        }
        assert!(
            seen.last()
                .unwrap()
                .error
                .as_deref()
                .unwrap()
                .contains("already open")
        );
    }
}
