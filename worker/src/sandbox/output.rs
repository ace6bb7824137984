//! Streams one of the task's pipes into the output channel as it is produced: chunks of at
//! most `OUTPUT_CHUNK_BYTES`, as text (invalid UTF-8 replaced, but a character split across two
//! reads is carried over, not mangled), counted against the task's output cap. Sending awaits
//! the bounded channel, so a slow consumer slows the reading and, through the pipe, the task.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc::Sender;
use vgas_shared::limits::OUTPUT_CHUNK_BYTES;

use super::OutputChunk;

/// Which pipe a pump reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn chunk(self, text: String) -> OutputChunk {
        match self {
            Stream::Stdout => OutputChunk::Stdout(text),
            Stream::Stderr => OutputChunk::Stderr(text),
        }
    }
}

/// The task wrote more than its output cap (stdout and stderr together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapExceeded;

/// Shared by the pumps of one task: bytes so far and the cap.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicU64,
    cap: u64,
}

impl Budget {
    pub(crate) fn new(cap: u64) -> Budget {
        Budget {
            used: AtomicU64::new(0),
            cap,
        }
    }

    /// Records `n` more bytes; returns how many of them fit under the cap.
    fn take(&self, n: usize) -> usize {
        let before = self.used.fetch_add(n as u64, Ordering::Relaxed);
        let room = self.cap.saturating_sub(before);
        usize::try_from(room).map_or(n, |room| room.min(n))
    }
}

/// Reads `pipe` to its end, sending chunks on `out`. Output goes on being read (and dropped)
/// if the receiver is gone, so the task never blocks on a full pipe.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    mut pipe: R,
    stream: Stream,
    out: &Sender<OutputChunk>,
    budget: &Budget,
) -> Result<(), CapExceeded> {
    let mut buf = vec![0u8; OUTPUT_CHUNK_BYTES];
    let mut carried = 0;
    let mut receiver_gone = false;
    loop {
        let n = match pipe.read(&mut buf[carried..]).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, ?stream, "task pipe read failed");
                break;
            }
        };
        let fits = budget.take(n);
        let end = carried + fits;
        let over = fits < n;
        let cut = if over {
            end
        } else {
            complete_utf8_prefix(&buf[..end])
        };
        if cut > 0 {
            let text = String::from_utf8_lossy(&buf[..cut]).into_owned();
            deliver(out, stream.chunk(text), &mut receiver_gone).await;
        }
        if over {
            return Err(CapExceeded);
        }
        buf.copy_within(cut..end, 0);
        carried = end - cut;
    }
    if carried > 0 {
        let text = String::from_utf8_lossy(&buf[..carried]).into_owned();
        deliver(out, stream.chunk(text), &mut receiver_gone).await;
    }
    Ok(())
}

/// Sends `chunk` unless the receiver is known to be gone; notes when it goes.
async fn deliver(out: &Sender<OutputChunk>, chunk: OutputChunk, receiver_gone: &mut bool) {
    if !*receiver_gone && out.send(chunk).await.is_err() {
        *receiver_gone = true;
    }
}

/// Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence that more
/// bytes could still complete. Invalid bytes are not held back (they become U+FFFD anyway).
pub(crate) fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let needed = match b {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC2..=0xDF => 2,
            _ => 1,
        };
        return if needed > back { len - back } else { len };
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_trailing_characters_are_held_back() {
        let euro = "€".as_bytes(); // E2 82 AC
        let emoji = "😀".as_bytes(); // F0 9F 98 80
        let cases: Vec<(Vec<u8>, usize)> = vec![
            (b"abc".to_vec(), 3),
            (vec![], 0),
            ([b"a", &euro[..1]].concat(), 1),
            ([b"a", &euro[..2]].concat(), 1),
            ([b"a", euro].concat(), 4),
            (emoji[..3].to_vec(), 0),
            (emoji.to_vec(), 4),
            (vec![b'a', 0xFF], 2),
            (vec![0x80, 0x80, 0x80, 0x80], 4),
        ];
        for (bytes, want) in cases {
            assert_eq!(complete_utf8_prefix(&bytes), want, "{bytes:x?}");
        }
    }

    #[tokio::test]
    async fn multibyte_characters_survive_any_split_and_the_cap_holds() {
        let text = "h€llo wörld 😀 ".repeat(3000);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let (mut w, r) = tokio::io::duplex(7);
        let input = text.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            for piece in input.as_bytes().chunks(5) {
                w.write_all(piece).await.unwrap();
            }
        });
        let budget = Budget::new(u64::MAX);
        let reader = async {
            let r = pump(r, Stream::Stdout, &tx, &budget).await;
            drop(tx);
            r
        };
        let collect = async {
            let mut got = String::new();
            while let Some(OutputChunk::Stdout(s)) = rx.recv().await {
                assert!(s.len() <= OUTPUT_CHUNK_BYTES);
                got.push_str(&s);
            }
            got
        };
        let (r, got) = tokio::join!(reader, collect);
        writer.await.unwrap();
        assert_eq!(r, Ok(()));
        assert_eq!(got, text);

        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let budget = Budget::new(10);
        let r = pump(&b"0123456789abcdef"[..], Stream::Stderr, &tx, &budget).await;
        assert_eq!(r, Err(CapExceeded));
        assert_eq!(
            rx.recv().await,
            Some(OutputChunk::Stderr("0123456789".into()))
        );
    }
}
