//! The value cache's warm-up after open (`Options::warm_value_cache`), run by the merge
//! thread before it serves merges.
//!
//! A restarted store has an empty value cache, and in `IoMode::Direct` nothing else holds its
//! values: every first get of a key would be a device read. When the store's live records fit
//! the cache whole, the merge thread reads the sealed datafiles sequentially instead (newest
//! first, 1 MiB a read, `O_DIRECT` in direct mode) and caches every value the keydir still
//! points at: a record's value after its CRC, a value kept apart after the CRC its keydir
//! entry holds, read from the value file in a second sequential pass. A value cached this
//! way is exactly the one a read of that entry would have cached, so gets need nothing else
//! to know; a record overwritten meanwhile is cached under a location no get asks for again.
//!
//! The warm-up gives way: it ends when a message reaches the merge thread (a merge asked
//! for, a close), when the store stops, or when the cache stops fitting the store. A file it
//! cannot read or decode is left (logged at debug): the reads that need its values report
//! what is wrong with them, as before.

use std::path::Path;
use std::time::Instant;

use crate::format::{self, Apart, FILE_HEADER_LEN, RECORD_HEADER_LEN};
use crate::io::{Access, IoFile};
use crate::keydir::Entry;
use crate::layout::{data_path, vals_path};
use crate::read::cache::ValueCache;
use crate::IoMode;

use super::Merger;

/// Bytes read per IO.
const CHUNK: usize = 1 << 20;

/// Why a file's warm-up ended before its end.
enum Stop {
    /// Something else needs the merge thread, or the store is closing.
    Yield,
    /// The file could not be read or decoded there.
    Failed(String),
}

/// A datafile or value file read front to back in chunks.
struct Chunks {
    file: IoFile,
    len: u64,
    direct: bool,
    /// The buffer of the reads, kept from one to the next (a fresh 1 MiB costs a page fault
    /// a page); the bytes read last are `buf[skip..skip + have]`, from offset `start`.
    buf: Vec<u8>,
    skip: usize,
    have: usize,
    start: u64,
}

impl Chunks {
    /// Opens `path` for sequential reads: `O_DIRECT` when `direct` and the file system allows
    /// it, else through the page cache.
    fn open(m: &Merger, path: &Path, direct: bool) -> std::io::Result<Chunks> {
        let opened = match direct {
            true => IoFile::open_direct(m.kind, path, None).ok(),
            false => None,
        };
        let direct = opened.is_some();
        let file = match opened {
            Some(f) => f,
            None => IoFile::open_read(m.kind, path, Access::Sequential, None)?,
        };
        Ok(Chunks {
            file,
            len: std::fs::metadata(path)?.len(),
            direct,
            buf: Vec::new(),
            skip: 0,
            have: 0,
            start: 0,
        })
    }

    /// The `len` bytes at `at`, reading a chunk from `at` when the last one does not hold them;
    /// `None` past the end of the file.
    async fn get(&mut self, at: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        let end = at.saturating_add(len as u64);
        if end > self.len {
            return Ok(None);
        }
        if at < self.start || end > self.start + self.have as u64 {
            let want = (self.len - at).min(CHUNK.max(len) as u64) as usize;
            let reuse = std::mem::take(&mut self.buf);
            (self.buf, self.skip) = match self.direct {
                true => self.file.read_direct_into(reuse, want, at).await?,
                false => (self.file.read_exact_into(reuse, want, at).await?, 0),
            };
            (self.have, self.start) = (want, at);
        }
        let from = (at - self.start) as usize;
        Ok(self.bytes().get(from..from + len))
    }

    /// The bytes read last.
    fn bytes(&self) -> &[u8] {
        let end = self.skip.saturating_add(self.have);
        self.buf.get(self.skip..end).unwrap_or_default()
    }

    /// The bytes of the last chunk from `at` on (`at` within it).
    fn from(&self, at: u64) -> &[u8] {
        let from = usize::try_from(at.saturating_sub(self.start)).unwrap_or(usize::MAX);
        self.bytes().get(from..).unwrap_or_default()
    }
}

/// What is wrong with a damaged record.
type Damage = Option<String>;

/// The whole records at the start of `bytes` (each with its offset in it), how many bytes
/// they take, and what is wrong with the bytes after them if they are damaged rather than cut
/// short by the end of `bytes`.
fn whole_records(bytes: &[u8]) -> (Vec<(usize, format::Record<'_>)>, usize, Damage) {
    let mut recs = Vec::new();
    let mut pos = 0;
    while let Some(rest) = bytes.get(pos..).filter(|r| r.len() >= RECORD_HEADER_LEN) {
        let len = match format::decode_record_header(rest) {
            Ok(h) => h.record_len(),
            Err(e) => return (recs, pos, Some(e.to_string())),
        };
        let Some(whole) = usize::try_from(len).ok().and_then(|n| rest.get(..n)) else {
            break;
        };
        match format::decode_record(whole) {
            Ok(rec) => recs.push((pos, rec)),
            Err(e) => return (recs, pos, Some(e.to_string())),
        }
        pos += whole.len();
    }
    (recs, pos, None)
}

impl Merger {
    /// Warms the value cache (see the module docs); `busy` says whether a message waits for
    /// the merge thread.
    pub(super) async fn warm_cache(&self, busy: impl Fn() -> bool) {
        let Some(cache) = self.cache.as_deref().filter(|_| self.opts.warm_value_cache) else {
            return;
        };
        let fits = || cache.holds_all(self.shared.live_bytes(), self.keydir.len());
        if self.keydir.len() == 0 || !fits() {
            tracing::debug!("value cache not warmed: the store's live records do not fit it");
            return;
        }
        let started = Instant::now();
        let mut files: Vec<u32> = self.sealed_files().iter().map(|f| f.file_id).collect();
        files.sort_unstable_by(|a, b| b.cmp(a));
        let mut warmed = 0u64;
        let mut ended = "done";
        for id in files {
            if busy() || self.stopping() || !fits() {
                ended = "stopped early";
                break;
            }
            match self.warm_file(cache, id, &busy).await {
                Ok(n) => warmed += n,
                Err((n, Stop::Yield)) => {
                    warmed += n;
                    ended = "stopped early";
                    break;
                }
                Err((n, Stop::Failed(why))) => {
                    warmed += n;
                    tracing::debug!(file_id = id, "value cache warm-up skips the file: {why}");
                }
            }
        }
        tracing::info!(
            values = warmed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "value cache warm-up {ended}"
        );
    }

    /// Caches the live values of datafile `id`: how many, or where it stopped and how many it
    /// had cached by then. The values kept apart that the records before a damaged one name
    /// are still cached.
    async fn warm_file(
        &self,
        cache: &ValueCache,
        id: u32,
        busy: &impl Fn() -> bool,
    ) -> Result<u64, (u64, Stop)> {
        let direct = self.opts.io_mode == IoMode::Direct;
        let mut data = Chunks::open(self, &data_path(&self.dir, id), direct)
            .map_err(|e| (0, Stop::Failed(e.to_string())))?;
        let mut apart: Vec<(Apart, Entry)> = Vec::new();
        let mut cached = 0u64;
        let walked = self
            .warm_records(cache, id, &mut data, busy, &mut apart, &mut cached)
            .await;
        if matches!(walked, Err(Stop::Yield)) || apart.is_empty() {
            return walked.map(|()| cached).map_err(|stop| (cached, stop));
        }
        let cached = self.warm_apart(cache, id, &apart, busy, cached).await?;
        walked.map(|()| cached).map_err(|stop| (cached, stop))
    }

    /// Walks datafile `id`'s records: caches the live values held in them (counting them in
    /// `cached`) and lists in `apart` the live values kept apart. Works a chunk at a time: the
    /// whole records a read brought in are decoded, then their keys looked up together
    /// ([`crate::keydir::KeyDir::get_many`]; one at a time, the lookups were most of the
    /// warm-up's time).
    async fn warm_records(
        &self,
        cache: &ValueCache,
        id: u32,
        data: &mut Chunks,
        busy: &impl Fn() -> bool,
        apart: &mut Vec<(Apart, Entry)>,
        cached: &mut u64,
    ) -> Result<(), Stop> {
        let failed = |e: &dyn std::fmt::Display| Stop::Failed(e.to_string());
        let mut at = FILE_HEADER_LEN as u64;
        while at < data.len {
            if busy() || self.stopping() {
                return Err(Stop::Yield);
            }
            // The record at `at` whole, and the rest of the chunk holding it.
            let header = match data.get(at, RECORD_HEADER_LEN).await {
                Ok(Some(b)) => format::decode_record_header(b).map_err(|e| failed(&e))?,
                Ok(None) => return Err(failed(&"a record header runs past the end")),
                Err(e) => return Err(failed(&e)),
            };
            // (A length past the end of the file is refused before anything is read.)
            let len = usize::try_from(header.record_len()).unwrap_or(usize::MAX);
            match data.get(at, len).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(failed(&"a record runs past the end")),
                Err(e) => return Err(failed(&e)),
            }
            let (recs, used, damage) = whole_records(data.from(at));
            let keys: Vec<&[u8]> = recs.iter().map(|(_, r)| r.key).collect();
            let entries = self.keydir.get_many(&keys);
            for ((off, rec), e) in recs.iter().zip(entries) {
                let Some(e) = self.live_entry(cache, e, id, at + *off as u64, rec) else {
                    continue;
                };
                match rec.apart {
                    Some(a) => apart.push((a, e)),
                    None => {
                        cache.insert_slice(&e, rec.value);
                        *cached += 1;
                        self.shared.values_warmed.add(1);
                    }
                }
            }
            if let Some(why) = damage {
                return Err(Stop::Failed(why));
            }
            at += used as u64;
        }
        Ok(())
    }

    /// `entry`, the keydir's entry for `rec` (read at `at` of datafile `id`), if it points at
    /// that very record, which holds a live value the cache does not hold yet.
    fn live_entry(
        &self,
        cache: &ValueCache,
        entry: Option<Entry>,
        id: u32,
        at: u64,
        rec: &format::Record<'_>,
    ) -> Option<Entry> {
        let (h, e) = (rec.header, entry?);
        let same = match rec.apart {
            Some(a) => e.is_apart() && e.data_id() == id && u64::from(e.offset) == a.offset,
            None => !e.is_apart() && e.file_id == id && u64::from(e.offset) == at,
        };
        let expired = h.expiry_ms != 0 && h.expiry_ms <= crate::clock::now_ms();
        (same && e.seq == h.seq && !h.is_tombstone() && !expired && !cache.holds(&e)).then_some(e)
    }

    /// Caches the values kept apart in datafile `id`'s value file that `apart` lists (in file
    /// order), each after its CRC; `cached` values were cached from the datafile before.
    async fn warm_apart(
        &self,
        cache: &ValueCache,
        id: u32,
        apart: &[(Apart, Entry)],
        busy: &impl Fn() -> bool,
        mut cached: u64,
    ) -> Result<u64, (u64, Stop)> {
        let failed = |n: u64, e: &dyn std::fmt::Display| (n, Stop::Failed(e.to_string()));
        let direct = self.opts.io_mode == IoMode::Direct;
        let mut vals =
            Chunks::open(self, &vals_path(&self.dir, id), direct).map_err(|e| failed(0, &e))?;
        for (a, e) in apart {
            if busy() || self.stopping() {
                return Err((cached, Stop::Yield));
            }
            let value = match vals.get(a.offset, a.len as usize).await {
                Ok(Some(v)) => v,
                Ok(None) => return Err(failed(cached, &"a value runs past the end")),
                Err(err) => return Err(failed(cached, &err)),
            };
            // A damaged value is left to the read that needs it, which reports it.
            if format::value_crc(value) == e.crc {
                cache.insert_slice(e, value);
                cached += 1;
                self.shared.values_warmed.add(1);
            }
        }
        Ok(cached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_records_stop_at_a_cut_quietly_and_at_damage_with_a_reason() {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for i in 0..5u64 {
            let key = format!("key{i}");
            format::encode_record(&mut buf, i + 1, 0, 0, key.as_bytes(), b"some value");
            ends.push(buf.len());
        }
        let (recs, used, damage) = whole_records(&buf);
        assert_eq!((recs.len(), used, damage), (5, buf.len(), None));
        assert_eq!(recs[3].0, ends[2]);
        assert_eq!(recs[3].1.key, b"key3");
        // Cut inside the fourth record, or inside its header: the three before it, no damage.
        for cut in [ends[3] - 1, ends[2] + 3] {
            let (recs, used, damage) = whole_records(&buf[..cut]);
            assert_eq!(
                (recs.len(), used, damage),
                (3, ends[2], None),
                "cut at {cut}"
            );
        }
        // A flipped byte in the fourth record's value: the three before it, and why.
        let mut bad = buf.clone();
        bad[ends[3] - 2] ^= 1;
        let (recs, used, damage) = whole_records(&bad);
        assert_eq!((recs.len(), used), (3, ends[2]));
        assert!(damage.is_some());
    }
}
