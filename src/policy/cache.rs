//! The TTS cache (issue 20): speech answers stored by a key the caller derives from the
//! request, so the same text in the same voice is synthesised once per `ttl`.
//!
//! A request meets three parts, in this order:
//! - the memory tier, a [`quick_cache`] cache weighed in bytes;
//! - the disk tier (optional), one file per key, which survives restarts and is read and
//!   written off the runtime's threads;
//! - coalescing ([`Cache::join`]): concurrent misses for one key go upstream once, and the
//!   other requests stream the leader's answer as it arrives instead of waiting for its end.
//!
//! Entries expire `ttl` after they were stored, in both tiers. Only complete answers are
//! stored: a stream that broke off is never kept, and never shown to a follower as complete.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use tokio::sync::watch;

use crate::body::{BoxError, ProxyBody};

/// SHA-256 of the request as the client meant it; computed by the caller.
pub type Key = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub memory_bytes: u64,
    pub dir: Option<PathBuf>,
    /// 0 when there is no `dir`.
    pub disk_bytes: u64,
    pub ttl: Duration,
    /// Larger answers are streamed but not stored.
    pub max_entry_bytes: u64,
}

/// A stored answer.
#[derive(Debug)]
pub struct Entry {
    pub content_type: HeaderValue,
    pub body: Bytes,
    pub stored_at: SystemTime,
}

/// What the tiers hold. `memory_bytes` is the memory tier's weight: bodies plus
/// [`ENTRY_OVERHEAD`] and the content type per entry. `disk_bytes` is the files' sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub memory_bytes: u64,
    pub memory_entries: u64,
    pub disk_bytes: u64,
    pub disk_entries: u64,
}

/// The TTS cache; shared as `Arc<Cache>`.
pub struct Cache {
    shared: Arc<Shared>,
}

/// What a cache and its open flights share: a [`Flight`] outlives the call that made it
/// and stores its answer when the body ends.
struct Shared {
    settings: CacheSettings,
    memory: Memory,
    disk: Option<Arc<Disk>>,
    /// The open flights. Touched only on misses, so one lock is enough.
    flights: Mutex<HashMap<Key, Arc<FlightState>>>,
    /// Disk writes started and not yet finished, for [`Cache::flush`].
    writes: Arc<watch::Sender<usize>>,
    /// Told of each answer a flight stored: how a tier beyond this process (Redis) is
    /// filled. Not told of [`Cache::insert`]s, which came from there.
    landed: std::sync::RwLock<Option<Landed>>,
}

/// See [`Cache::on_landed`].
pub type Landed = Arc<dyn Fn(Key, &Arc<Entry>) + Send + Sync>;

impl Cache {
    /// Opens the tiers. With a `dir`, creates it if missing and indexes the files already
    /// there: files that do not parse and expired ones are removed, then the least recently
    /// used are evicted down to `disk_bytes`.
    ///
    /// Blocking: called at config load or startup, not per request. Errors (the directory
    /// cannot be created, read or written) are returned for the caller to report; a bad
    /// file inside it is not an error.
    pub fn open(settings: CacheSettings) -> io::Result<Cache> {
        let memory = memory_tier(&settings)?;
        let disk = match &settings.dir {
            Some(dir) => Some(Arc::new(Disk::open(
                dir.clone(),
                settings.disk_bytes,
                settings.ttl,
            )?)),
            None => None,
        };
        Ok(Cache {
            shared: Arc::new(Shared {
                settings,
                memory,
                disk,
                flights: Mutex::new(HashMap::new()),
                writes: Arc::new(watch::Sender::new(0)),
                landed: std::sync::RwLock::new(None),
            }),
        })
    }

    /// Calls `hook` with every answer a flight stores from now on (replacing the hook
    /// before, `None` removing it).
    pub fn on_landed(&self, hook: Option<Landed>) {
        if let Ok(mut slot) = self.shared.landed.write() {
            *slot = hook;
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.shared.settings
    }

    /// The entry if present and younger than `ttl`: memory first, then disk. A disk hit is
    /// read on a blocking thread and put in memory. Expired entries are removed.
    pub async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        if let Some(entry) = self.shared.memory_get(key) {
            return Some(entry);
        }
        let disk = self.shared.disk.as_ref()?;
        // Checking the index first saves a trip to a blocking thread on most misses.
        let generation = disk.generation_of(key)?;
        let (reader, owned_key, ttl) = (Arc::clone(disk), *key, self.shared.settings.ttl);
        let entry = tokio::task::spawn_blocking(move || reader.read(&owned_key, generation, ttl))
            .await
            .ok()??;
        let entry = Arc::new(entry);
        self.shared.memory.insert(*key, Arc::clone(&entry));
        Some(entry)
    }

    /// Stores a complete answer; ignored if larger than `max_entry_bytes`. Memory at once;
    /// disk in the background (see [`Cache::flush`]), through a temporary file renamed into
    /// place, so a reader or a restart never sees half a file under a key's name.
    pub fn insert(&self, key: Key, entry: Entry) {
        self.shared.store(key, entry);
    }

    /// Coalescing: the first caller for a key becomes the leader; while its flight is open,
    /// later callers for the same key are followers.
    ///
    /// A flight that has just stored its answer leaves the map after storing it, so a
    /// caller that missed in [`Cache::get`] a moment before may find neither the flight nor
    /// a miss: it is then handed a follower whose answer is already complete.
    pub fn join(&self, key: Key) -> Join {
        let mut flights = lock(&self.shared.flights);
        if let Some(state) = flights.get(&key) {
            return Join::Follower(Waiter::new(Arc::clone(state)));
        }
        if let Some(entry) = self.shared.memory_get(&key) {
            return Join::Follower(Waiter::new(Arc::new(FlightState::complete(&entry))));
        }
        let state = Arc::new(FlightState::new());
        flights.insert(key, Arc::clone(&state));
        Join::Leader(Flight {
            open: Some(OpenFlight {
                shared: Arc::clone(&self.shared),
                key,
                state,
            }),
        })
    }

    /// Waits until the disk writes started so far have finished: for tests, and for a
    /// shutdown that wants the last answers on disk.
    pub async fn flush(&self) {
        let mut writes = self.shared.writes.subscribe();
        // The sender lives in `shared`, which `self` holds: this cannot fail.
        let _ = writes.wait_for(|pending| *pending == 0).await;
    }

    pub fn stats(&self) -> CacheStats {
        let (disk_bytes, disk_entries) = match &self.shared.disk {
            Some(disk) => disk.usage(),
            None => (0, 0),
        };
        CacheStats {
            memory_bytes: self.shared.memory.weight(),
            memory_entries: self.shared.memory.len() as u64,
            disk_bytes,
            disk_entries,
        }
    }
}

impl Shared {
    /// The memory tier's entry if it is still fresh; a stale one is removed (unless a
    /// fresh one replaced it in the meantime).
    fn memory_get(&self, key: &Key) -> Option<Arc<Entry>> {
        let entry = self.memory.get(key)?;
        if fresh(entry.stored_at, self.settings.ttl, SystemTime::now()) {
            return Some(entry);
        }
        self.memory.remove_if(key, |held| Arc::ptr_eq(held, &entry));
        None
    }

    fn store(&self, key: Key, entry: Entry) -> Option<Arc<Entry>> {
        if entry.body.len() as u64 > self.settings.max_entry_bytes {
            return None;
        }
        let entry = Arc::new(entry);
        self.memory.insert(key, Arc::clone(&entry));
        if let Some(disk) = &self.disk {
            self.write_behind(disk, key, Arc::clone(&entry));
        }
        Some(entry)
    }

    fn write_behind(&self, disk: &Arc<Disk>, key: Key, entry: Arc<Entry>) {
        // A file larger than the whole tier would only evict everything else, then itself.
        if file_len(&entry) > disk.limit {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to keep responsive: write here.
            disk.write(&key, &entry);
            return;
        };
        self.writes.send_modify(|pending| *pending += 1);
        // Counted down when the task ends or is dropped unrun (runtime shutting down).
        let done = WriteDone(Arc::clone(&self.writes));
        let disk = Arc::clone(disk);
        runtime.spawn_blocking(move || {
            let _done = done;
            disk.write(&key, &entry);
        });
    }
}

struct WriteDone(Arc<watch::Sender<usize>>);

impl Drop for WriteDone {
    fn drop(&mut self) {
        self.0.send_modify(|pending| *pending -= 1);
    }
}

/// A poisoned lock only means another thread panicked while holding it; every critical
/// section here leaves its data consistent at each step, so carry on with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Younger than `ttl`. A time in the future (the clock was set back since) is trusted only
/// within one `ttl`, so a wild timestamp cannot keep an entry forever.
fn fresh(stored_at: SystemTime, ttl: Duration, now: SystemTime) -> bool {
    match now.duration_since(stored_at) {
        Ok(age) => age < ttl,
        Err(ahead) => ahead.duration() < ttl,
    }
}

// ---------------------------------------------------------------------------------------
// Memory tier

type Memory = quick_cache::sync::Cache<Key, Arc<Entry>, EntryWeight>;

/// What an entry costs in memory beyond its body and content type: the `Arc`, the
/// `Entry`, the key and the cache's slot, rounded up. Also keeps every weight above zero,
/// which quick_cache would never evict.
pub const ENTRY_OVERHEAD: u64 = 256;

/// A guess at an average answer (a few seconds of speech), for sizing the cache's tables.
const TYPICAL_ENTRY: u64 = 64 * 1024;

#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<Key, Arc<Entry>> for EntryWeight {
    fn weight(&self, _key: &Key, entry: &Arc<Entry>) -> u64 {
        entry.body.len() as u64 + entry.content_type.len() as u64 + ENTRY_OVERHEAD
    }
}

/// quick_cache splits its capacity into shards and admits to a shard only what fits in
/// 97 % of that shard's share, so the shard count is chosen for each shard to hold twice
/// the largest entry we store: otherwise big answers would never be kept in memory.
///
/// Eviction is quick_cache's CLOCK-Pro-like policy, not plain LRU: an entry read again is
/// kept over a run of new entries read once.
fn memory_tier(settings: &CacheSettings) -> io::Result<Memory> {
    let largest = settings
        .max_entry_bytes
        .saturating_add(ENTRY_OVERHEAD + 256);
    let fits = settings.memory_bytes / largest.saturating_mul(2);
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64 * 4;
    let wanted = fits.min(parallel).max(1);
    let shards = 1u64 << (63 - wanted.leading_zeros());
    // quick_cache rounds each shard's share up; a multiple of the shard count keeps the
    // total at or under the configured bytes.
    let capacity = settings.memory_bytes - settings.memory_bytes % shards;
    let items = (capacity / TYPICAL_ENTRY).clamp(1, 1 << 20);
    let options = quick_cache::OptionsBuilder::new()
        .shards(shards as usize)
        .estimated_items_capacity(items as usize)
        .weight_capacity(capacity)
        .build()
        .map_err(|e| io::Error::other(format!("tts cache memory tier: {e:?}")))?;
    Ok(Memory::with_options(
        options,
        EntryWeight,
        Default::default(),
        Default::default(),
    ))
}

// ---------------------------------------------------------------------------------------
// Disk tier
//
// One file per key, named by the key in lowercase hex:
//
//   magic "VGTC" | version 1 | stored_at: u64 LE unix seconds | body length: u64 LE
//   | content-type length: u16 LE | content type | body
//
// The body length lets a short file (a crash mid-write on a file system that reorders
// the rename before the data) be told from a complete one without a checksum. Files are
// not fsynced: a lost or short file is a miss, not a wrong answer.

const MAGIC: [u8; 4] = *b"VGTC";
const VERSION: u8 = 1;
/// The header's fixed part: everything before the content type.
const FIXED: usize = 4 + 1 + 8 + 8 + 2;
/// Temporary files being written; any found at open are leftovers of a crash.
const TEMP_PREFIX: &str = ".tmp-";

struct Header {
    stored_at: SystemTime,
    body_len: u64,
    content_type: HeaderValue,
    /// Bytes before the body.
    len: usize,
}

fn encode_header(entry: &Entry) -> io::Result<Vec<u8>> {
    let content_type = entry.content_type.as_bytes();
    let content_type_len = u16::try_from(content_type.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "content type too long"))?;
    let stored_at = entry
        .stored_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut header = Vec::with_capacity(FIXED + content_type.len());
    header.extend_from_slice(&MAGIC);
    header.push(VERSION);
    header.extend_from_slice(&stored_at.to_le_bytes());
    header.extend_from_slice(&(entry.body.len() as u64).to_le_bytes());
    header.extend_from_slice(&content_type_len.to_le_bytes());
    header.extend_from_slice(content_type);
    Ok(header)
}

/// The header at the start of `bytes`, or `None` if it is not one of ours (or is cut
/// short). `bytes` may hold only the header or the whole file.
fn decode_header(bytes: &[u8]) -> Option<Header> {
    let fixed = bytes.get(..FIXED)?;
    let (magic, rest) = fixed.split_at(4);
    let (version, rest) = rest.split_at(1);
    let (stored_at, rest) = rest.split_at(8);
    let (body_len, content_type_len) = rest.split_at(8);
    if magic != MAGIC || version[0] != VERSION {
        return None;
    }
    let stored_at = u64::from_le_bytes(stored_at.try_into().ok()?);
    let body_len = u64::from_le_bytes(body_len.try_into().ok()?);
    let content_type_len = usize::from(u16::from_le_bytes(content_type_len.try_into().ok()?));
    let content_type = bytes.get(FIXED..FIXED + content_type_len)?;
    Some(Header {
        stored_at: UNIX_EPOCH.checked_add(Duration::from_secs(stored_at))?,
        body_len,
        content_type: HeaderValue::from_bytes(content_type).ok()?,
        len: FIXED + content_type_len,
    })
}

/// A whole file as an entry, or `None` if it is corrupt or its length disagrees with its
/// header. The body is a slice of the file's buffer, not a copy.
fn decode_file(file: Bytes) -> Option<Entry> {
    let header = decode_header(&file)?;
    if (file.len() - header.len) as u64 != header.body_len {
        return None;
    }
    Some(Entry {
        content_type: header.content_type,
        body: file.slice(header.len..),
        stored_at: header.stored_at,
    })
}

fn file_len(entry: &Entry) -> u64 {
    (FIXED + entry.content_type.len() + entry.body.len()) as u64
}

fn hex(key: &Key) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut name = String::with_capacity(64);
    for byte in key {
        name.push(char::from(DIGITS[usize::from(byte >> 4)]));
        name.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    name
}

/// The key a file name stands for: exactly 64 lowercase hex digits, as [`hex`] writes.
fn parse_hex(name: &str) -> Option<Key> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    if name.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(name.as_bytes().chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(key)
}

/// Unique names for temporary files, also across caches open on one directory.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

struct Disk {
    dir: PathBuf,
    limit: u64,
    /// Held only for bookkeeping, never across file system calls, so the runtime's threads
    /// may take it.
    index: Mutex<DiskIndex>,
}

/// The files on disk as this process believes them to be.
///
/// File system calls happen outside the lock, so the index can briefly disagree with the
/// directory (an eviction that unlinks a key rewritten a moment before). A read that finds
/// a file missing forgets the key, and each file remembers the write it came from
/// (`generation`) so that a stale reader never forgets a newer write.
#[derive(Default)]
struct DiskIndex {
    files: HashMap<Key, DiskFile>,
    /// (last use, key), oldest first: the eviction order.
    by_use: BTreeSet<(u64, Key)>,
    /// A logical clock for uses and generations.
    clock: u64,
    bytes: u64,
}

struct DiskFile {
    len: u64,
    used: u64,
    generation: u64,
}

impl DiskIndex {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn add(&mut self, key: Key, len: u64) {
        self.remove(&key);
        let now = self.tick();
        self.files.insert(
            key,
            DiskFile {
                len,
                used: now,
                generation: now,
            },
        );
        self.by_use.insert((now, key));
        self.bytes += len;
    }

    fn remove(&mut self, key: &Key) -> Option<DiskFile> {
        let file = self.files.remove(key)?;
        self.by_use.remove(&(file.used, *key));
        self.bytes -= file.len;
        Some(file)
    }

    fn touch(&mut self, key: &Key, generation: u64) {
        let now = self.tick();
        if let Some(file) = self.files.get_mut(key) {
            if file.generation == generation {
                self.by_use.remove(&(file.used, *key));
                file.used = now;
                self.by_use.insert((now, *key));
            }
        }
    }

    /// Forgets `key` if the index still describes the write `generation`.
    fn forget(&mut self, key: &Key, generation: u64) {
        if self.files.get(key).map(|file| file.generation) == Some(generation) {
            self.remove(key);
        }
    }

    /// Drops the least recently used files until the total is within `limit`; returns
    /// their keys for the caller to unlink (outside the lock).
    fn evict_over(&mut self, limit: u64) -> Vec<Key> {
        let mut victims = Vec::new();
        while self.bytes > limit {
            let Some(&(_, key)) = self.by_use.first() else {
                break;
            };
            self.remove(&key);
            victims.push(key);
        }
        victims
    }
}

impl Disk {
    fn open(dir: PathBuf, limit: u64, ttl: Duration) -> io::Result<Disk> {
        fs::create_dir_all(&dir)?;
        let disk = Disk {
            dir,
            limit,
            index: Mutex::new(DiskIndex::default()),
        };
        // Fail now, where the operator sees it, rather than on every write later.
        let probe = disk.temp_path();
        File::create(&probe)?;
        fs::remove_file(&probe)?;

        let now = SystemTime::now();
        let mut found = Vec::new();
        for item in fs::read_dir(&disk.dir)? {
            let Ok(item) = item else { continue };
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = item.path();
            if name.starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(&path);
                continue;
            }
            // Files of other names are not ours: the directory may be shared by mistake,
            // and deleting what we did not write would be worse than ignoring it.
            let Some(key) = parse_hex(name) else { continue };
            match inspect(&path) {
                Ok(Some(found_file)) if fresh(found_file.stored_at, ttl, now) => {
                    found.push((found_file.modified, key, found_file.len));
                }
                Ok(None) => {}
                // Corrupt, short, expired or unreadable.
                Ok(Some(_)) | Err(_) => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        // The modification time is the last use (a read sets it), so the oldest-used
        // files are evicted first across restarts too.
        found.sort();
        let victims = {
            let mut index = lock(&disk.index);
            for (_, key, len) in found {
                index.add(key, len);
            }
            index.evict_over(disk.limit)
        };
        disk.unlink(victims);
        Ok(disk)
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(hex(key))
    }

    fn temp_path(&self) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
    }

    fn usage(&self) -> (u64, u64) {
        let index = lock(&self.index);
        (index.bytes, index.files.len() as u64)
    }

    fn generation_of(&self, key: &Key) -> Option<u64> {
        lock(&self.index).files.get(key).map(|file| file.generation)
    }

    fn unlink(&self, keys: Vec<Key>) {
        for key in keys {
            let _ = fs::remove_file(self.path(&key));
        }
    }

    /// Blocking. The entry if its file is whole and fresh; a corrupt or expired file is
    /// removed, a missing one forgotten.
    fn read(&self, key: &Key, generation: u64, ttl: Duration) -> Option<Entry> {
        let path = self.path(key);
        let read = File::open(&path).and_then(|mut file| {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok((file, decode_file(Bytes::from(bytes))))
        });
        let now = SystemTime::now();
        match read {
            Ok((file, Some(entry))) if fresh(entry.stored_at, ttl, now) => {
                lock(&self.index).touch(key, generation);
                // Persist the use for the eviction order after a restart; only a hint.
                let _ = file.set_modified(now);
                Some(entry)
            }
            Ok(_) => {
                lock(&self.index).forget(key, generation);
                let _ = fs::remove_file(&path);
                None
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    lock(&self.index).forget(key, generation);
                } else {
                    tracing::warn!(error = %e, path = %path.display(), "tts cache: cannot read a cached answer");
                }
                None
            }
        }
    }

    /// Blocking. Errors are logged: a failed write costs a future miss, nothing more.
    fn write(&self, key: &Key, entry: &Entry) {
        if let Err(e) = self.try_write(key, entry) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "tts cache: cannot write an answer to disk");
        }
    }

    fn try_write(&self, key: &Key, entry: &Entry) -> io::Result<()> {
        let header = encode_header(entry)?;
        let temp = self.temp_path();
        let written = File::create(&temp)
            .and_then(|mut file| {
                file.write_all(&header)?;
                file.write_all(&entry.body)
            })
            .and_then(|()| fs::rename(&temp, self.path(key)));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        let victims = {
            let mut index = lock(&self.index);
            index.add(*key, file_len(entry));
            index.evict_over(self.limit)
        };
        self.unlink(victims);
        Ok(())
    }
}

struct Inspected {
    modified: SystemTime,
    stored_at: SystemTime,
    len: u64,
}

/// A file's header and size, without reading its body: `Ok(None)` for what is not a
/// regular file, `Ok(Some)` for a whole file of ours, `Err` for anything else.
fn inspect(path: &Path) -> io::Result<Option<Inspected>> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "not a cache file");
    let mut head = vec![0u8; FIXED];
    file.read_exact(&mut head)?;
    let content_type_len = usize::from(u16::from_le_bytes([head[FIXED - 2], head[FIXED - 1]]));
    head.resize(FIXED + content_type_len, 0);
    file.read_exact(&mut head[FIXED..])?;
    let header = decode_header(&head).ok_or_else(corrupt)?;
    if meta.len() != header.len as u64 + header.body_len {
        return Err(corrupt());
    }
    Ok(Some(Inspected {
        modified: meta.modified()?,
        stored_at: header.stored_at,
        len: meta.len(),
    }))
}

// ---------------------------------------------------------------------------------------
// Coalescing

pub enum Join {
    Leader(Flight),
    Follower(Waiter),
}

/// One upstream request that followers share.
///
/// Memory: every chunk of the answer is retained until the flight ends and the last
/// follower has finished reading, since a follower that joined late reads from the first
/// chunk. An answer's size is bounded by what upstream sends (the stream is never stored
/// whole unless it is within `max_entry_bytes`).
struct FlightState {
    inner: Mutex<FlightInner>,
}

struct FlightInner {
    phase: Phase,
    content_type: Option<HeaderValue>,
    chunks: Vec<Bytes>,
    /// Who to wake on the next change, by waiter id.
    wakers: Vec<(u64, Waker)>,
    next_id: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// The leader has no answer yet.
    Waiting,
    /// The leader got a 2xx answer and its body is passing.
    Streaming,
    /// The body ended cleanly: `chunks` is the whole answer.
    Complete,
    /// The body failed or was dropped before its end.
    Broken,
    /// The leader got no 2xx answer.
    GaveUp,
}

impl FlightState {
    fn new() -> FlightState {
        FlightState {
            inner: Mutex::new(FlightInner {
                phase: Phase::Waiting,
                content_type: None,
                chunks: Vec::new(),
                wakers: Vec::new(),
                next_id: 0,
            }),
        }
    }

    fn complete(entry: &Entry) -> FlightState {
        let state = FlightState::new();
        {
            let mut inner = lock(&state.inner);
            inner.phase = Phase::Complete;
            inner.content_type = Some(entry.content_type.clone());
            if !entry.body.is_empty() {
                inner.chunks.push(entry.body.clone());
            }
        }
        state
    }

    fn lock(&self) -> MutexGuard<'_, FlightInner> {
        lock(&self.inner)
    }

    fn new_id(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        inner.next_id
    }

    fn forget_waker(&self, id: u64) {
        self.lock().wakers.retain(|(held, _)| *held != id);
    }

    /// Changes the state and wakes every waiter, outside the lock.
    fn update(&self, change: impl FnOnce(&mut FlightInner)) {
        let wakers = {
            let mut inner = self.lock();
            change(&mut inner);
            std::mem::take(&mut inner.wakers)
        };
        for (_, waker) in wakers {
            waker.wake();
        }
    }
}

impl FlightInner {
    fn register(&mut self, id: u64, waker: &Waker) {
        match self.wakers.iter_mut().find(|(held, _)| *held == id) {
            Some((_, held)) => held.clone_from(waker),
            None => self.wakers.push((id, waker.clone())),
        }
    }
}

/// The leader's side. Dropping it without [`Flight::answered`] means the leader got no
/// 2xx answer: followers are released to go upstream themselves.
pub struct Flight {
    /// `None` once handed to the answer's body.
    open: Option<OpenFlight>,
}

/// A flight not yet landed; [`OpenFlight::land`] ends it exactly once.
struct OpenFlight {
    shared: Arc<Shared>,
    key: Key,
    state: Arc<FlightState>,
}

enum Landing {
    Complete,
    Broken,
    GaveUp,
}

impl OpenFlight {
    fn land(self, landing: Landing) {
        let phase = match landing {
            Landing::Complete => Phase::Complete,
            Landing::Broken => Phase::Broken,
            Landing::GaveUp => Phase::GaveUp,
        };
        if phase == Phase::Complete {
            let (content_type, chunks) = {
                let inner = self.state.lock();
                (inner.content_type.clone(), inner.chunks.clone())
            };
            let len: u64 = chunks.iter().map(|chunk| chunk.len() as u64).sum();
            // An empty 2xx answer is an upstream fault; keeping it would serve silence
            // for a whole ttl.
            if let Some(content_type) = content_type.filter(|_| len > 0) {
                if len <= self.shared.settings.max_entry_bytes {
                    let stored = self.shared.store(
                        self.key,
                        Entry {
                            content_type,
                            body: concat(chunks, len),
                            stored_at: SystemTime::now(),
                        },
                    );
                    let hook = self.shared.landed.read().ok().and_then(|h| h.clone());
                    if let (Some(entry), Some(hook)) = (stored, hook) {
                        hook(self.key, &entry);
                    }
                }
            }
        }
        self.state.update(|inner| inner.phase = phase);
        // Only after storing: a request arriving now either joins this flight or hits.
        let mut flights = lock(&self.shared.flights);
        if flights
            .get(&self.key)
            .is_some_and(|held| Arc::ptr_eq(held, &self.state))
        {
            flights.remove(&self.key);
        }
    }
}

fn concat(chunks: Vec<Bytes>, len: u64) -> Bytes {
    if chunks.len() == 1 {
        return chunks.into_iter().next().unwrap_or_default();
    }
    let mut whole = BytesMut::with_capacity(len as usize);
    for chunk in chunks {
        whole.extend_from_slice(&chunk);
    }
    whole.freeze()
}

impl Flight {
    /// The leader got a 2xx answer with this content type. Returns the body to stream to
    /// the leader's client, which also:
    /// - hands every data frame to the followers as it passes;
    /// - when the body ends cleanly with at most `max_entry_bytes`, stores the answer;
    /// - on an error from the inner body, or when it is dropped before its end (the
    ///   leader's client went away), marks the flight broken: followers' bodies end with
    ///   an error, never as a truncated answer that looks complete, and nothing is stored.
    ///   That the leader's client can cut off the followers is accepted: it is rare, and
    ///   the alternative is reading upstream for nobody.
    pub fn answered(mut self, content_type: HeaderValue, body: ProxyBody) -> ProxyBody {
        let Some(open) = self.open.take() else {
            return body;
        };
        open.state.update(|inner| {
            inner.phase = Phase::Streaming;
            inner.content_type = Some(content_type);
        });
        let mut tee = Tee {
            inner: body,
            open: Some(open),
            passed: 0,
        };
        // hyper never polls a body that says it is over.
        if tee.inner.is_end_stream() {
            tee.land(Landing::Complete);
        }
        BoxBody::new(tee)
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            open.land(Landing::GaveUp);
        }
    }
}

/// The leader's body: the upstream body, copied to the flight as it passes.
struct Tee {
    inner: ProxyBody,
    /// `None` once landed.
    open: Option<OpenFlight>,
    /// Bytes passed so far.
    passed: u64,
}

impl Tee {
    fn land(&mut self, landing: Landing) {
        if let Some(open) = self.open.take() {
            open.land(landing);
        }
    }

    /// Keeps `data` for the followers and the store. An answer past `max_entry_bytes`
    /// that no follower has joined is let go of at once: it will not be stored, and
    /// keeping it would hold a long stream whole in memory for nobody. New identical
    /// requests then go upstream themselves; followers already reading keep it all.
    fn pass(&mut self, data: &Bytes) {
        let Some(open) = &self.open else {
            return;
        };
        if data.is_empty() {
            return;
        }
        self.passed += data.len() as u64;
        let over = self.passed > open.shared.settings.max_entry_bytes;
        let mut alone = false;
        open.state.update(|inner| {
            // Waiter ids are handed out from 1: 0 means none ever joined.
            if over && inner.next_id == 0 {
                alone = true;
                inner.chunks = Vec::new();
                inner.phase = Phase::GaveUp;
            } else {
                inner.chunks.push(data.clone());
            }
        });
        if alone {
            self.land(Landing::GaveUp);
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.pass(data);
                }
                // The caller may stop polling once the body says it is over.
                if this.inner.is_end_stream() {
                    this.land(Landing::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.land(Landing::Broken);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.land(Landing::Complete);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        let landing = if self.inner.is_end_stream() {
            Landing::Complete
        } else {
            Landing::Broken
        };
        self.land(landing);
    }
}

/// A follower's side.
pub struct Waiter {
    state: Arc<FlightState>,
    id: u64,
}

impl Waiter {
    fn new(state: Arc<FlightState>) -> Waiter {
        let id = state.new_id();
        Waiter { state, id }
    }

    /// Waits until the leader answered (`Some`: the content type, and a body that streams
    /// the same bytes from the first one, as they arrive) or gave up (`None`: go upstream
    /// yourself). A flight that already broke before this call is also `None`: nothing has
    /// been sent yet, so going upstream is still possible.
    pub async fn wait(self) -> Option<(HeaderValue, ProxyBody)> {
        let content_type = std::future::poll_fn(|cx| {
            let mut inner = self.state.lock();
            match inner.phase {
                Phase::Waiting => {
                    inner.register(self.id, cx.waker());
                    Poll::Pending
                }
                Phase::Streaming | Phase::Complete => Poll::Ready(inner.content_type.clone()),
                Phase::Broken | Phase::GaveUp => Poll::Ready(None),
            }
        })
        .await?;
        let body = Follow {
            id: self.state.new_id(),
            state: Arc::clone(&self.state),
            next: 0,
            done: false,
        };
        Some((content_type, BoxBody::new(body)))
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.state.forget_waker(self.id);
    }
}

/// The error a follower's body ends with when the leader's stream broke off.
#[derive(Debug, thiserror::Error)]
#[error("the shared upstream answer broke off before its end")]
pub struct FlightBroken;

/// A follower's body: the flight's chunks from the first, then each as it arrives.
/// Dropping it affects nobody else.
struct Follow {
    state: Arc<FlightState>,
    id: u64,
    /// The next chunk to send.
    next: usize,
    done: bool,
}

impl Body for Follow {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut inner = this.state.lock();
        if let Some(chunk) = inner.chunks.get(this.next) {
            let chunk = chunk.clone();
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match inner.phase {
            Phase::Streaming => {
                inner.register(this.id, cx.waker());
                Poll::Pending
            }
            Phase::Complete => {
                this.done = true;
                Poll::Ready(None)
            }
            // A body is made only after the answer began; anything else is a break.
            Phase::Broken | Phase::Waiting | Phase::GaveUp => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(FlightBroken))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.state.forget_waker(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::channel::Channel;
    use http_body_util::BodyExt;

    const MPEG: HeaderValue = HeaderValue::from_static("audio/mpeg");

    fn settings(memory_bytes: u64) -> CacheSettings {
        CacheSettings {
            memory_bytes,
            dir: None,
            disk_bytes: 0,
            ttl: Duration::from_secs(60),
            max_entry_bytes: 1 << 20,
        }
    }

    fn disk_settings(dir: &Path, memory_bytes: u64, disk_bytes: u64) -> CacheSettings {
        CacheSettings {
            dir: Some(dir.to_path_buf()),
            disk_bytes,
            ..settings(memory_bytes)
        }
    }

    fn key(n: u8) -> Key {
        [n; 32]
    }

    fn entry(body: impl Into<Bytes>) -> Entry {
        Entry {
            content_type: MPEG,
            body: body.into(),
            stored_at: SystemTime::now(),
        }
    }

    async fn collect(body: ProxyBody) -> Result<Bytes, BoxError> {
        Ok(body.collect().await?.to_bytes())
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_cache_and_its_handles_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Cache>();
        send::<Flight>();
        send::<Waiter>();
        // Request handlers hold these futures across awaits on a multi-threaded runtime.
        fn send_future<F: std::future::Future + Send>(_: F) {}
        let cache = Cache::open(settings(1 << 20)).unwrap();
        send_future(cache.get(&key(1)));
        send_future(cache.flush());
        let _leader = cache.join(key(1));
        let Join::Follower(waiter) = cache.join(key(1)) else {
            panic!("second");
        };
        send_future(waiter.wait());
    }

    #[tokio::test]
    async fn an_inserted_answer_is_got_back_and_other_keys_miss() {
        let cache = Cache::open(settings(1 << 20)).unwrap();
        cache.insert(key(1), entry("hello"));
        let hit = cache.get(&key(1)).await.expect("stored");
        assert_eq!(hit.body, "hello");
        assert_eq!(hit.content_type, MPEG);
        assert!(cache.get(&key(2)).await.is_none());
    }

    #[tokio::test]
    async fn an_entry_older_than_the_ttl_is_a_miss_and_is_removed() {
        let cache = Cache::open(CacheSettings {
            ttl: Duration::from_millis(50),
            ..settings(1 << 20)
        })
        .unwrap();
        cache.insert(key(1), entry("hello"));
        assert!(cache.get(&key(1)).await.is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(cache.get(&key(1)).await.is_none());
        assert_eq!(cache.stats().memory_entries, 0);
    }

    #[tokio::test]
    async fn memory_holds_its_byte_cap_by_evicting() {
        let cap = 100 * 1024;
        let cache = Cache::open(settings(cap)).unwrap();
        for n in 0..30 {
            cache.insert(key(n), entry(vec![n; 10 * 1024]));
            assert!(cache.stats().memory_bytes <= cap);
        }
        let stats = cache.stats();
        assert!(stats.memory_entries <= 9, "{stats:?}");
        let mut resident = 0;
        for n in 0..30 {
            resident += u64::from(cache.get(&key(n)).await.is_some());
        }
        assert_eq!(resident, stats.memory_entries);
        // The first entry was never read again: it went, though later ones were kept.
        assert!(cache.get(&key(0)).await.is_none());
    }

    #[tokio::test]
    async fn an_entry_read_again_outlives_a_run_of_new_ones() {
        let cap = 100 * 1024;
        let cache = Cache::open(settings(cap)).unwrap();
        cache.insert(key(200), entry(vec![1; 10 * 1024]));
        assert!(cache.get(&key(200)).await.is_some());
        for n in 0..30 {
            cache.insert(key(n), entry(vec![n; 10 * 1024]));
            assert!(cache.get(&key(200)).await.is_some(), "evicted at {n}");
        }
    }

    #[tokio::test]
    async fn an_answer_over_max_entry_bytes_is_not_stored() {
        let cache = Cache::open(CacheSettings {
            max_entry_bytes: 10,
            ..settings(1 << 20)
        })
        .unwrap();
        cache.insert(key(1), entry(vec![0; 11]));
        assert!(cache.get(&key(1)).await.is_none());
        cache.insert(key(2), entry(vec![0; 10]));
        assert!(cache.get(&key(2)).await.is_some());
    }

    #[tokio::test]
    async fn the_disk_tier_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(disk_settings(dir.path(), 1 << 20, 1 << 20)).unwrap();
        cache.insert(key(1), entry("spoken words"));
        cache.flush().await;
        let stats = cache.stats();
        assert_eq!(stats.disk_entries, 1);
        assert_eq!(stats.disk_bytes, file_len(&entry("spoken words")));
        drop(cache);

        let cache = Cache::open(disk_settings(dir.path(), 1 << 20, 1 << 20)).unwrap();
        assert_eq!(cache.stats().memory_entries, 0);
        assert_eq!(cache.stats().disk_entries, 1);
        let hit = cache.get(&key(1)).await.expect("on disk");
        assert_eq!(hit.body, "spoken words");
        assert_eq!(hit.content_type, MPEG);
        // A disk hit is promoted to memory.
        assert_eq!(cache.stats().memory_entries, 1);
        assert!(cache.get(&key(2)).await.is_none());
    }

    #[tokio::test]
    async fn the_disk_tier_evicts_the_least_recently_used_to_keep_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let one = file_len(&entry(vec![0; 1000]));
        // Memory holds nothing, so every get reads the disk.
        let cache = Cache::open(disk_settings(dir.path(), 0, 3 * one + one / 2)).unwrap();
        for n in 0..3 {
            cache.insert(key(n), entry(vec![n; 1000]));
            cache.flush().await;
        }
        assert!(cache.get(&key(0)).await.is_some());
        cache.insert(key(3), entry(vec![3; 1000]));
        cache.flush().await;

        let stats = cache.stats();
        assert_eq!((stats.disk_entries, stats.disk_bytes), (3, 3 * one));
        assert_eq!(files_in(dir.path()).len(), 3);
        assert!(
            cache.get(&key(1)).await.is_none(),
            "the least recently used"
        );
        for n in [0, 2, 3] {
            assert!(cache.get(&key(n)).await.is_some(), "key {n}");
        }
        drop(cache);

        // A smaller cap is enforced at open.
        let cache = Cache::open(disk_settings(dir.path(), 0, one)).unwrap();
        assert_eq!(cache.stats().disk_entries, 1);
        assert_eq!(files_in(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn bad_files_are_removed_at_open_and_miss() {
        let dir = tempfile::tempdir().unwrap();
        let good = entry("whole");
        let mut whole = encode_header(&good).unwrap();
        whole.extend_from_slice(&good.body);
        fs::write(dir.path().join(hex(&key(1))), &whole).unwrap();
        fs::write(dir.path().join(hex(&key(2))), b"garbage").unwrap();
        fs::write(dir.path().join(hex(&key(3))), &whole[..whole.len() - 1]).unwrap();
        let old = Entry {
            stored_at: SystemTime::now() - Duration::from_secs(3600),
            ..entry("old")
        };
        let mut expired = encode_header(&old).unwrap();
        expired.extend_from_slice(&old.body);
        fs::write(dir.path().join(hex(&key(4))), &expired).unwrap();
        fs::write(dir.path().join(format!("{TEMP_PREFIX}1-1")), b"half").unwrap();
        fs::write(dir.path().join("README"), b"not ours").unwrap();

        let cache = Cache::open(disk_settings(dir.path(), 1 << 20, 1 << 20)).unwrap();
        assert_eq!(
            files_in(dir.path()),
            vec![hex(&key(1)), "README".to_string()]
        );
        assert_eq!(cache.stats().disk_entries, 1);
        assert_eq!(cache.get(&key(1)).await.expect("whole").body, "whole");
        for n in 2..=4 {
            assert!(cache.get(&key(n)).await.is_none(), "key {n}");
        }
    }

    #[tokio::test]
    async fn a_file_corrupted_while_running_is_a_miss_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(disk_settings(dir.path(), 0, 1 << 20)).unwrap();
        cache.insert(key(1), entry("words"));
        cache.flush().await;
        fs::write(dir.path().join(hex(&key(1))), b"VGTC\x01").unwrap();
        assert!(cache.get(&key(1)).await.is_none());
        assert!(files_in(dir.path()).is_empty());
        assert_eq!(cache.stats().disk_entries, 0);
    }

    #[test]
    fn open_reports_a_directory_it_cannot_create() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let opened = Cache::open(disk_settings(&file.join("cache"), 0, 1 << 20));
        assert!(opened.is_err());
    }

    #[test]
    fn every_truncation_of_a_file_is_rejected_without_panicking() {
        let good = entry("some audio");
        let mut whole = encode_header(&good).unwrap();
        whole.extend_from_slice(&good.body);
        let decoded = decode_file(Bytes::from(whole.clone())).expect("whole file");
        assert_eq!(decoded.body, "some audio");
        assert_eq!(decoded.content_type, MPEG);
        for len in 0..whole.len() {
            assert!(decode_file(Bytes::copy_from_slice(&whole[..len])).is_none());
        }
        let mut other_version = whole.clone();
        other_version[4] = 2;
        assert!(decode_file(Bytes::from(other_version)).is_none());
        let mut bad_type = whole;
        bad_type[FIXED] = b'\n';
        assert!(decode_file(Bytes::from(bad_type)).is_none());
    }

    #[test]
    fn keys_round_trip_through_file_names() {
        let mut k = [0u8; 32];
        for (i, byte) in k.iter_mut().enumerate() {
            *byte = (i * 37) as u8;
        }
        assert_eq!(parse_hex(&hex(&k)), Some(k));
        assert_eq!(parse_hex(&hex(&k).to_uppercase()), None);
        assert_eq!(parse_hex("abc"), None);
    }

    /// Sends `chunks` slowly through a channel body.
    fn slow_body(chunks: &'static [&'static str]) -> ProxyBody {
        let (mut tx, body) = Channel::<Bytes, BoxError>::new(1);
        tokio::spawn(async move {
            for chunk in chunks {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if tx
                    .send_data(Bytes::from_static(chunk.as_bytes()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        BoxBody::new(body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_go_upstream_once_and_all_stream_the_same_answer() {
        let cache = Arc::new(Cache::open(settings(1 << 20)).unwrap());
        let k = key(7);
        let joins: Vec<_> = (0..20)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.join(k) })
            })
            .collect();
        let mut leaders = Vec::new();
        let mut followers = Vec::new();
        for join in joins {
            match join.await.unwrap() {
                Join::Leader(flight) => leaders.push(flight),
                Join::Follower(waiter) => followers.push(waiter),
            }
        }
        assert_eq!((leaders.len(), followers.len()), (1, 19));
        let flight = leaders.pop().unwrap();
        let follow = |waiter: Waiter| {
            tokio::spawn(async move {
                let (content_type, body) = waiter.wait().await.expect("the leader answered");
                (content_type, collect(body).await.unwrap())
            })
        };
        let followers: Vec<_> = followers.into_iter().map(follow).collect();

        let (mut tx, upstream) = Channel::<Bytes, BoxError>::new(1);
        let mut body = flight.answered(MPEG, BoxBody::new(upstream));
        let mut leader_got = BytesMut::new();
        tx.send_data(Bytes::from_static(b"one, ")).await.unwrap();
        leader_got.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());

        let Join::Follower(late) = cache.join(k) else {
            panic!("a request during the flight must follow it");
        };
        let late = follow(late);
        for chunk in ["two, ", "three"] {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send_data(Bytes::from_static(chunk.as_bytes()))
                .await
                .unwrap();
            leader_got
                .extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());
        }
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(leader_got, "one, two, three");

        for follower in followers.into_iter().chain([late]) {
            let (content_type, got) = follower.await.unwrap();
            assert_eq!(content_type, MPEG);
            assert_eq!(got, "one, two, three");
        }
        let hit = cache.get(&k).await.expect("stored after the flight");
        assert_eq!(hit.body, "one, two, three");
        // The flight has left the map; a new request is served from the cache.
        let Join::Follower(waiter) = cache.join(k) else {
            panic!("a stored answer must not go upstream again");
        };
        let (_, body) = waiter.wait().await.unwrap();
        assert_eq!(collect(body).await.unwrap(), "one, two, three");
    }

    #[tokio::test]
    async fn a_leader_without_an_answer_releases_its_followers() {
        let cache = Cache::open(settings(1 << 20)).unwrap();
        let Join::Leader(flight) = cache.join(key(1)) else {
            panic!("first");
        };
        let Join::Follower(waiter) = cache.join(key(1)) else {
            panic!("second");
        };
        let waiting = tokio::spawn(waiter.wait());
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(flight);
        assert!(waiting.await.unwrap().is_none());
        assert!(cache.get(&key(1)).await.is_none());
        assert!(matches!(cache.join(key(1)), Join::Leader(_)));
    }

    /// Starts a flight with one follower streaming; returns the leader's body, the
    /// upstream sender and the follower's outcome.
    async fn flight_with_a_follower(
        cache: &Cache,
        k: Key,
    ) -> (
        ProxyBody,
        http_body_util::channel::Sender<Bytes, BoxError>,
        tokio::task::JoinHandle<Result<Bytes, BoxError>>,
        Waiter,
    ) {
        let Join::Leader(flight) = cache.join(k) else {
            panic!("first");
        };
        let Join::Follower(waiter) = cache.join(k) else {
            panic!("second");
        };
        let Join::Follower(idle) = cache.join(k) else {
            panic!("third");
        };
        let (mut tx, upstream) = Channel::<Bytes, BoxError>::new(1);
        let mut body = flight.answered(MPEG, BoxBody::new(upstream));
        // Started before the break: a follower that has not started by then goes upstream.
        let (_, following) = waiter.wait().await.expect("answered");
        let follower = tokio::spawn(collect(following));
        tx.send_data(Bytes::from_static(b"half")).await.unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "half"
        );
        (body, tx, follower, idle)
    }

    #[tokio::test]
    async fn an_upstream_error_breaks_the_followers_and_stores_nothing() {
        let cache = Cache::open(settings(1 << 20)).unwrap();
        let (mut body, tx, follower, idle) = flight_with_a_follower(&cache, key(1)).await;
        tx.abort("upstream reset".into());
        assert!(body.frame().await.unwrap().is_err());
        assert!(follower.await.unwrap().is_err());
        // One that had not started yet may still go upstream itself.
        assert!(idle.wait().await.is_none());
        assert!(cache.get(&key(1)).await.is_none());
        assert!(matches!(cache.join(key(1)), Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_leader_body_dropped_midway_breaks_the_followers_and_stores_nothing() {
        let cache = Cache::open(settings(1 << 20)).unwrap();
        let (body, _tx, follower, _idle) = flight_with_a_follower(&cache, key(1)).await;
        drop(body);
        assert!(follower.await.unwrap().is_err());
        assert!(cache.get(&key(1)).await.is_none());
        assert!(matches!(cache.join(key(1)), Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_follower_that_goes_away_does_not_disturb_the_leader() {
        let cache = Cache::open(settings(1 << 20)).unwrap();
        let Join::Leader(flight) = cache.join(key(1)) else {
            panic!("first");
        };
        let Join::Follower(waiter) = cache.join(key(1)) else {
            panic!("second");
        };
        let body = flight.answered(MPEG, slow_body(&["a", "b", "c"]));
        // Chunks reach followers only as the leader's client reads them.
        let leader = tokio::spawn(collect(body));
        let (_, mut follower) = waiter.wait().await.unwrap();
        assert_eq!(
            follower
                .frame()
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap(),
            "a"
        );
        drop(follower);
        assert_eq!(leader.await.unwrap().unwrap(), "abc");
        assert_eq!(cache.get(&key(1)).await.unwrap().body, "abc");
    }

    #[tokio::test]
    async fn an_answer_too_large_to_store_still_reaches_every_follower() {
        let cache = Cache::open(CacheSettings {
            max_entry_bytes: 8,
            ..settings(1 << 20)
        })
        .unwrap();
        let Join::Leader(flight) = cache.join(key(1)) else {
            panic!("first");
        };
        let waiters: Vec<_> = (0..3)
            .map(|_| match cache.join(key(1)) {
                Join::Follower(waiter) => tokio::spawn(async move {
                    let (_, body) = waiter.wait().await.unwrap();
                    collect(body).await.unwrap()
                }),
                Join::Leader(_) => panic!("a flight is open"),
            })
            .collect();
        let body = flight.answered(MPEG, slow_body(&["12345", "67890", "abcde"]));
        assert_eq!(collect(body).await.unwrap(), "1234567890abcde");
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), "1234567890abcde");
        }
        assert!(cache.get(&key(1)).await.is_none());
    }

    #[tokio::test]
    async fn a_long_answer_nobody_follows_is_let_go_of_as_it_passes() {
        let cache = Cache::open(CacheSettings {
            max_entry_bytes: 8,
            ..settings(1 << 20)
        })
        .unwrap();
        let Join::Leader(flight) = cache.join(key(1)) else {
            panic!("first");
        };
        let mut body = flight.answered(MPEG, slow_body(&["12345", "67890", "abcde"]));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "12345");
        // Still within the cap: an identical request follows.
        assert!(matches!(cache.join(key(1)), Join::Follower(_)));
        // Past the cap with no follower (a fresh cache, its flight alone): let go of.
        let alone = Cache::open(CacheSettings {
            max_entry_bytes: 8,
            ..settings(1 << 20)
        })
        .unwrap();
        let Join::Leader(flight) = alone.join(key(2)) else {
            panic!("first");
        };
        let mut long = flight.answered(MPEG, slow_body(&["12345", "67890", "abcde"]));
        long.frame().await.unwrap().unwrap();
        long.frame().await.unwrap().unwrap();
        assert!(
            matches!(alone.join(key(2)), Join::Leader(_)),
            "the flight was closed once past the cap, so a new request leads its own"
        );
        assert_eq!(
            collect(long).await.unwrap(),
            "abcde",
            "the leader still gets it all"
        );
        assert_eq!(collect(body).await.unwrap(), "67890abcde");
    }

    #[tokio::test]
    async fn a_completed_flight_is_written_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(disk_settings(dir.path(), 1 << 20, 1 << 20)).unwrap();
        let Join::Leader(flight) = cache.join(key(1)) else {
            panic!("first");
        };
        let body = flight.answered(MPEG, slow_body(&["x", "y"]));
        assert_eq!(collect(body).await.unwrap(), "xy");
        cache.flush().await;
        assert_eq!(files_in(dir.path()), vec![hex(&key(1))]);
    }
}
