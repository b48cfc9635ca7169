//! The replay store: a request body kept so that it can be sent again to the next upstream.
//!
//! Bytes are kept in memory while both the per-request and the process-wide budgets allow,
//! and go to an unlinked temporary file after that. A [`Replay`] is written once, by the
//! intake, and then read any number of times, concurrently, as [`Replay::stream`]s: memory
//! chunks are handed out as `Bytes` clones (no copy), file ranges are read with positional
//! reads so readers never share a file offset.

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream};

/// Spilled bytes are written and read in pieces of this size: each piece is a round trip
/// to a blocking thread, and at 256 KiB those wake-ups cost 8 % of an upload's CPU.
const FILE_CHUNK: usize = 1024 * 1024;
/// Bytes kept in memory are kept in blocks of this size.
const BLOCK: usize = 64 * 1024;

/// The memory all in-flight request bodies together may hold.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    /// Bytes written to spill files since start, for metrics.
    spilled: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget {
            limit,
            used: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
        }
    }

    /// Bytes written to spill files since start.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    /// Bytes currently held in memory by replays.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= self.limit).then_some(used + n)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Memory taken from the budget, given back when dropped.
#[derive(Debug)]
struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Limits for one request's replay.
#[derive(Debug, Clone)]
pub struct ReplayLimits {
    pub memory_per_request: u64,
    pub budget: Arc<MemoryBudget>,
    pub spill_dir: Option<PathBuf>,
}

/// Builds a [`Replay`] from the chunks of a body as they arrive.
///
/// Chunks of [`KEEP_WHOLE`] bytes or more are kept as they are (a `Bytes` clone: an upload
/// is not copied once more on its way through); smaller ones are copied into one staging
/// block, so that a body arriving in many tiny chunks costs the same memory, and reads
/// back as fast, as one arriving in large ones, and no tiny chunk pins a large socket
/// buffer. Pending pieces are sealed together once they reach [`BLOCK`] bytes (spilled
/// data: [`FILE_CHUNK`], one write per seal).
#[derive(Debug)]
pub struct ReplayWriter {
    limits: ReplayLimits,
    memory: Vec<Bytes>,
    reservation: Reservation,
    file: Option<Arc<SpillFile>>,
    file_len: u64,
    /// Pieces not yet sealed, in order; the last may still be growing in `staging`.
    pending: Vec<Bytes>,
    pending_len: usize,
    staging: BytesMut,
}

/// Chunks at least this large are kept without copying. A chunk is a slice of the
/// server's read buffer and keeps all of it alive. hyper asks for at most 256 KiB (the
/// server's `max_buf_size`) and `bytes` may round a reused buffer up to twice that, so a
/// kept chunk holds at most 4 times its size alive (2 in the usual case), and the budgets
/// hold to within that factor. Smaller chunks are copied, which lets their buffer go: a
/// client that sends its body in small pieces cannot make many times its budget live.
const KEEP_WHOLE: usize = 128 * 1024;

impl ReplayWriter {
    pub fn new(limits: ReplayLimits) -> ReplayWriter {
        let reservation = Reservation {
            budget: limits.budget.clone(),
            bytes: 0,
        };
        ReplayWriter {
            limits,
            memory: Vec::new(),
            reservation,
            file: None,
            file_len: 0,
            pending: Vec::new(),
            pending_len: 0,
            staging: BytesMut::new(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.reservation.bytes + self.file_len + (self.pending_len + self.staging.len()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn seal_size(&self) -> usize {
        if self.file.is_some() {
            FILE_CHUNK
        } else {
            BLOCK
        }
    }

    pub async fn push(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.len() >= KEEP_WHOLE {
            self.stage_end();
            self.pending_len += chunk.len();
            self.pending.push(chunk);
        } else {
            // Copied in blocks of exactly BLOCK bytes, each sealed as soon as it is full.
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                if self.staging.capacity() == 0 {
                    self.staging.reserve(BLOCK);
                }
                let take = (BLOCK - self.staging.len()).min(rest.len());
                self.staging.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.staging.len() == BLOCK {
                    self.stage_end();
                    if self.pending_len >= self.seal_size() {
                        self.seal().await?;
                    }
                }
            }
        }
        if self.pending_len + self.staging.len() >= self.seal_size() {
            self.seal().await?;
        }
        Ok(())
    }

    /// Moves the staged small chunks to the pending pieces.
    fn stage_end(&mut self) {
        if !self.staging.is_empty() {
            let block = self.staging.split().freeze();
            self.pending_len += block.len();
            self.pending.push(block);
        }
    }

    /// Keeps the staged and pending pieces: in memory if the budgets allow, else in the
    /// spill file.
    async fn seal(&mut self) -> io::Result<()> {
        self.stage_end();
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.pending_len as u64;
        let pieces = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        if self.file.is_none()
            && self.reservation.bytes + n <= self.limits.memory_per_request
            && self.limits.budget.try_reserve(n)
        {
            self.reservation.bytes += n;
            self.memory.extend(pieces);
            return Ok(());
        }
        let file = match &self.file {
            Some(file) => file.clone(),
            None => {
                let dir = self
                    .limits
                    .spill_dir
                    .clone()
                    .unwrap_or_else(std::env::temp_dir);
                let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
                    .await
                    .map_err(io::Error::other)??;
                let file = Arc::new(SpillFile(Some(file)));
                self.file = Some(file.clone());
                file
            }
        };
        tokio::task::spawn_blocking(move || {
            pieces
                .iter()
                .try_for_each(|piece| (&**file).write_all(piece))
        })
        .await
        .map_err(io::Error::other)??;
        self.file_len += n;
        self.limits.budget.spilled.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    pub async fn finish(mut self) -> io::Result<Replay> {
        self.seal().await?;
        let ReplayWriter {
            memory,
            reservation,
            file,
            file_len,
            ..
        } = self;
        let memory_len = reservation.bytes;
        Ok(Replay {
            memory,
            memory_len,
            file,
            file_len,
            _reservation: reservation,
        })
    }
}

/// A spill file, shared by the writer, the finished replay and reads in flight. Closing
/// it frees its blocks, which takes a while for a large one: the last holder to let go
/// hands the close to a blocking thread instead of the thread serving requests (with
/// `threads = 1`, the one thread serving all of them).
#[derive(Debug)]
struct SpillFile(Option<File>);

impl std::ops::Deref for SpillFile {
    type Target = File;

    fn deref(&self) -> &File {
        self.0
            .as_ref()
            .expect("a spill file is taken only when dropped")
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let Some(file) = self.0.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // On a runtime shutting down the task is dropped, and the file closed, here.
            drop(runtime.spawn_blocking(move || drop(file)));
        }
    }
}

/// Bytes `offset..offset + len` of a replay's spill file.
#[derive(Debug, Clone)]
pub struct FileRange {
    file: Arc<SpillFile>,
    pub offset: u64,
    pub len: u64,
}

impl FileRange {
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// A finished, immutable request body: memory first, then the spilled rest.
#[derive(Debug)]
pub struct Replay {
    memory: Vec<Bytes>,
    memory_len: u64,
    file: Option<Arc<SpillFile>>,
    file_len: u64,
    _reservation: Reservation,
}

impl Replay {
    pub fn len(&self) -> u64 {
        self.memory_len + self.file_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether part of the body went to disk.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// `range` split where memory ends: the part held in memory (for [`Replay::stream`])
    /// and the spilled part, if any, as a range of the spill file.
    pub fn split(&self, range: Range<u64>) -> (Range<u64>, Option<FileRange>) {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        let memory = start.min(self.memory_len)..end.min(self.memory_len);
        let spilled = start.max(self.memory_len)..end;
        let file = match &self.file {
            Some(file) if !spilled.is_empty() => Some(FileRange {
                file: file.clone(),
                offset: spilled.start - self.memory_len,
                len: spilled.end - spilled.start,
            }),
            _ => None,
        };
        (memory, file)
    }

    /// The bytes in `range`, as a stream of chunks.
    pub fn stream(
        self: &Arc<Self>,
        range: Range<u64>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let replay = Arc::clone(self);
        let end = range.end.min(replay.len());
        // State: the replay, the position, and the memory block that holds it with the
        // block's offset, so that each step is O(1).
        stream::try_unfold(
            (replay, range.start, 0usize, 0u64),
            move |(replay, pos, mut index, mut block_start)| async move {
                if pos >= end {
                    return Ok(None);
                }
                if pos < replay.memory_len {
                    while block_start + replay.memory[index].len() as u64 <= pos {
                        block_start += replay.memory[index].len() as u64;
                        index += 1;
                    }
                    let block = &replay.memory[index];
                    let from = (pos - block_start) as usize;
                    let to = ((end - block_start) as usize).min(block.len());
                    let piece = block.slice(from..to);
                    let next = pos + piece.len() as u64;
                    return Ok(Some((piece, (replay, next, index, block_start))));
                }
                let file = replay.file.clone().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "replay range out of bounds")
                })?;
                let offset = pos - replay.memory_len;
                let want = (end - pos).min(FILE_CHUNK as u64) as usize;
                let piece = tokio::task::spawn_blocking(move || read_at(&file, offset, want))
                    .await
                    .map_err(io::Error::other)??;
                let next = pos + piece.len() as u64;
                Ok(Some((piece, (replay, next, index, block_start))))
            },
        )
    }
}

/// `want` bytes of `file` from `offset`, read into fresh memory that is not zeroed first
/// (256 KiB a piece: zeroing cost as much as a tenth of an upload's CPU).
fn read_at(file: &File, offset: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(want);
    while buf.len() < want {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The capacity may exceed `want`, and the read with it.
    buf.truncate(want);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    fn noise(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn limits(per_request: u64, total: u64) -> ReplayLimits {
        ReplayLimits {
            memory_per_request: per_request,
            budget: Arc::new(MemoryBudget::new(total)),
            spill_dir: None,
        }
    }

    /// What an open file descriptor of this process points at.
    fn fd_target(fd: i32) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
    }

    /// Dropping a spilled replay does not close its file on the dropping thread: with the
    /// only blocking thread held up, the file stays open until that thread is free.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_spill_file_is_closed_on_a_blocking_thread() {
        use std::os::fd::AsRawFd;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let replay = fill(&limits(0, 0), &[&noise(3000)]).await;
            assert!(replay.spilled());
            let fd = replay.file.as_ref().unwrap().as_raw_fd();
            let target = fd_target(fd).expect("the spill file is open");
            let (release, held) = std::sync::mpsc::channel::<()>();
            let busy = tokio::task::spawn_blocking(move || held.recv());
            drop(replay);
            assert_eq!(
                fd_target(fd),
                Some(target.clone()),
                "closed on the dropping thread"
            );
            release.send(()).unwrap();
            busy.await.unwrap().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while fd_target(fd).as_ref() == Some(&target) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the spill file was never closed"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
    }

    async fn fill(limits: &ReplayLimits, chunks: &[&[u8]]) -> Arc<Replay> {
        let mut w = ReplayWriter::new(limits.clone());
        for c in chunks {
            w.push(Bytes::copy_from_slice(c)).await.unwrap();
        }
        Arc::new(w.finish().await.unwrap())
    }

    async fn read(replay: &Arc<Replay>, range: Range<u64>) -> Vec<u8> {
        let chunks: Vec<Bytes> = replay.stream(range).try_collect().await.unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory_and_read_back_in_any_range() {
        let l = limits(1024, 4096);
        let s = fill(&l, &[b"hello ", b"wide ", b"world"]).await;
        assert!(!s.spilled());
        assert_eq!(l.budget.used(), 16);
        assert_eq!(read(&s, 0..16).await, b"hello wide world");
        assert_eq!(read(&s, 3..13).await, b"lo wide wo");
        assert_eq!(read(&s, 6..6).await, b"");
        drop(s);
        assert_eq!(l.budget.used(), 0, "memory goes back to the budget");
    }

    #[tokio::test]
    async fn bodies_over_the_request_budget_spill_to_disk() {
        let l = limits(BLOCK as u64, 1 << 20);
        let head = noise(BLOCK);
        let big = vec![7u8; 3 * FILE_CHUNK + 5];
        let s = fill(&l, &[&head, &big, b"tail"]).await;
        assert!(s.spilled());
        assert_eq!(l.budget.used(), BLOCK as u64, "one block in memory");
        let all = read(&s, 0..s.len()).await;
        assert_eq!(all.len(), BLOCK + big.len() + 4);
        assert_eq!(&all[..BLOCK], &head[..]);
        assert_eq!(&all[all.len() - 4..], b"tail");
        let edge = BLOCK as u64;
        assert_eq!(
            read(&s, edge - 2..edge + 2).await,
            [head[BLOCK - 2], head[BLOCK - 1], 7, 7]
        );
        // Two readers at once see the same bytes.
        let (a, b) = tokio::join!(read(&s, 0..s.len()), read(&s, 0..s.len()));
        assert_eq!(a, b);
    }

    #[tokio::test]
    async fn tiny_chunks_are_kept_in_blocks() {
        let l = limits(1 << 20, 1 << 20);
        let mut w = ReplayWriter::new(l.clone());
        let data = noise(200_000);
        for byte in &data {
            w.push(Bytes::copy_from_slice(&[*byte])).await.unwrap();
        }
        let s = Arc::new(w.finish().await.unwrap());
        assert_eq!(s.memory.len(), 200_000usize.div_ceil(BLOCK));
        let pieces: Vec<Bytes> = s.stream(0..s.len()).try_collect().await.unwrap();
        assert_eq!(pieces.len(), s.memory.len());
        assert_eq!(pieces.concat(), data);
    }

    #[tokio::test]
    async fn the_global_budget_is_shared_between_requests() {
        let l = limits(100, 150);
        let a = fill(&l, &[&[1u8; 100]]).await;
        let b = fill(&l, &[&[2u8; 100]]).await;
        assert!(!a.spilled());
        assert!(b.spilled(), "second body does not fit the global budget");
        assert_eq!(read(&b, 0..100).await, vec![2u8; 100]);
        drop(a);
        let c = fill(&l, &[&[3u8; 100]]).await;
        assert!(!c.spilled());
    }

    #[tokio::test]
    async fn an_abandoned_writer_returns_its_memory() {
        let l = limits(1 << 20, 1 << 20);
        let mut w = ReplayWriter::new(l.clone());
        w.push(Bytes::from(vec![1u8; BLOCK + 3])).await.unwrap();
        assert_eq!(l.budget.used(), BLOCK as u64);
        drop(w);
        assert_eq!(l.budget.used(), 0);
    }

    #[tokio::test]
    async fn large_chunks_are_kept_without_a_copy() {
        let l = limits(1 << 20, 1 << 20);
        let mut w = ReplayWriter::new(l.clone());
        let big = Bytes::from(noise(KEEP_WHOLE));
        w.push(big.clone()).await.unwrap();
        w.push(big.clone()).await.unwrap();
        let s = Arc::new(w.finish().await.unwrap());
        let pieces: Vec<Bytes> = s.stream(0..s.len()).try_collect().await.unwrap();
        assert_eq!(pieces.len(), 2);
        for piece in &pieces {
            assert_eq!(piece.as_ptr(), big.as_ptr(), "the chunk itself, not a copy");
        }
    }

    #[tokio::test]
    async fn mixed_chunk_sizes_keep_their_order_in_memory_and_on_disk() {
        // Small, large, small, … across the memory limit and into the spill file.
        let l = limits(3 * BLOCK as u64, 1 << 22);
        let mut w = ReplayWriter::new(l.clone());
        let data = noise(9 * BLOCK + 1234);
        let mut at = 0;
        for (i, size) in [
            100,
            KEEP_WHOLE * 3,
            7,
            BLOCK,
            5000,
            FILE_CHUNK + 9,
            1,
            KEEP_WHOLE,
        ]
        .iter()
        .cycle()
        .enumerate()
        {
            if at == data.len() {
                break;
            }
            let to = (at + size + i % 3).min(data.len());
            w.push(Bytes::copy_from_slice(&data[at..to])).await.unwrap();
            at = to;
        }
        assert_eq!(w.len(), data.len() as u64);
        let s = Arc::new(w.finish().await.unwrap());
        assert!(s.spilled());
        assert!(l.budget.used() <= 3 * BLOCK as u64);
        assert_eq!(read(&s, 0..s.len()).await, data);
        assert_eq!(read(&s, 777..6 * BLOCK as u64).await, &data[777..6 * BLOCK]);
    }

    #[tokio::test]
    async fn chunks_under_the_threshold_are_copied_to_free_their_buffer() {
        let l = limits(1 << 20, 1 << 20);
        let mut w = ReplayWriter::new(l.clone());
        let buffer = Bytes::from(noise(256 * 1024));
        // 100 KiB of a 256 KiB read buffer: kept as a slice, it would hold 2.5 times its
        // size alive.
        let piece = buffer.slice(..100 * 1024);
        w.push(piece.clone()).await.unwrap();
        let s = Arc::new(w.finish().await.unwrap());
        let kept: Vec<Bytes> = s.stream(0..s.len()).try_collect().await.unwrap();
        assert_eq!(kept.concat(), piece);
        let range = buffer.as_ptr_range();
        assert!(
            kept.iter().all(|k| !range.contains(&k.as_ptr())),
            "a copy, not a slice that keeps the 256 KiB buffer alive"
        );
    }
}
