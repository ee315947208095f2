//! The replicated state machine on ringcask.
//!
//! Directory layout: `CURRENT` names the live generation `g`; `sm-<g>/` is its ringcask store
//! (`d` + key → value, `m:applied` → the last applied log id, `m:membership` → the stored
//! membership, all three written in one atomic batch per entry); `snapshot` is the current
//! snapshot file (see `snapshot_file`). Installing a snapshot loads it into `sm-<g+1>/`, syncs
//! and closes it, then renames `CURRENT.tmp` over `CURRENT` (the commit point) and removes the
//! old generation; open removes any generation `CURRENT` does not name.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use ringcask::{Db, Options, SyncPolicy, WriteBatch};

use crate::snapshot_file::{self, Writer};
use crate::{
    decode, encode, io_err, read_json, LogId, Request, Response, SnapshotMeta, StoredMembership,
    TypeConfig,
};

const APPLIED: &[u8] = b"m:applied";
const MEMBERSHIP: &[u8] = b"m:membership";
const DATA: u8 = b'd';
/// Records per batch when a snapshot is installed.
const INSTALL_BATCH: usize = 4096;

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, File>;

fn data_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The Raft state machine: a key-value map on a ringcask store.
pub struct StateMachine {
    root: PathBuf,
    generation: u64,
    /// The live generation's store, shared with [`Reader`]s (an install replaces it).
    db: Arc<RwLock<Db>>,
    /// Serialises replacing the current snapshot file (builds and installs may overlap).
    publish: Arc<std::sync::Mutex<()>>,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl StateMachine {
    /// Opens (or creates) the state machine in `root`.
    ///
    /// # Errors
    /// IO errors; a `CURRENT` or state that does not decode.
    pub async fn open(root: impl AsRef<Path>) -> io::Result<StateMachine> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root)?;
        let generation = match std::fs::read_to_string(root.join("CURRENT")) {
            Ok(s) => s.trim().parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("CURRENT holds {s:?}"))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                commit_generation(&root, 0)?;
                0
            }
            Err(e) => return Err(e),
        };
        remove_other_generations(&root, generation)?;
        snapshot_file::remove_temps(&root)?;
        let db = open_generation(&root, generation).await?;
        let applied = read_json(&db, APPLIED, "applied log id").await?.flatten();
        let membership = read_json(&db, MEMBERSHIP, "membership")
            .await?
            .unwrap_or_default();
        Ok(StateMachine {
            root,
            generation,
            db: Arc::new(RwLock::new(db)),
            publish: Arc::default(),
            applied,
            membership,
        })
    }

    /// The value of `key` in the applied state.
    ///
    /// # Errors
    /// The store's read errors.
    pub async fn get(&self, key: &str) -> io::Result<Option<String>> {
        self.reader().get(key).await
    }

    /// A handle that reads the applied state while openraft owns the state machine.
    pub fn reader(&self) -> Reader {
        Reader {
            db: self.db.clone(),
        }
    }

    fn db(&self) -> Db {
        current(&self.db)
    }

    /// Closes the store.
    ///
    /// # Errors
    /// The store's close error.
    pub async fn close(&self) -> io::Result<()> {
        self.db().close().await.map_err(io_err)
    }

    fn snapshot_path(&self) -> PathBuf {
        self.root.join("snapshot")
    }

    /// Applies one request to the store, with the applied log id, in one batch.
    async fn apply_request(&self, req: &Request, log_id: &LogId) -> io::Result<Response> {
        let applied = encode(&Some(*log_id))?;
        let (batch, response) = match req {
            Request::Set { key, value } => {
                let previous = self.get(key).await?;
                let b = WriteBatch::new().put(data_key(key), value);
                (b, Response { ok: true, previous })
            }
            Request::Delete { key } => {
                let previous = self.get(key).await?;
                (
                    WriteBatch::new().delete(data_key(key)),
                    Response { ok: true, previous },
                )
            }
            Request::CompareAndSwap { key, expected, new } => {
                let previous = self.get(key).await?;
                let ok = &previous == expected;
                let b = match (ok, new) {
                    (false, _) => WriteBatch::new(),
                    (true, Some(v)) => WriteBatch::new().put(data_key(key), v),
                    (true, None) => WriteBatch::new().delete(data_key(key)),
                };
                (b, Response { ok, previous })
            }
        };
        // The state machine applies entries one at a time, so nothing else writes the key
        // between the read above and this batch.
        self.db()
            .write(batch.put(APPLIED, applied))
            .await
            .map_err(io_err)?;
        Ok(response)
    }
}

fn current(db: &RwLock<Db>) -> Db {
    db.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Reads the applied state of a [`StateMachine`] (of whichever generation is live).
#[derive(Clone)]
pub struct Reader {
    db: Arc<RwLock<Db>>,
}

impl Reader {
    /// How many keys the live generation's store holds (the data keys and a few of the
    /// state machine's own); O(1).
    pub fn len(&self) -> usize {
        current(&self.db).len()
    }

    /// Closes the live generation's store (after Raft has shut down: see
    /// [`crate::node::Node::shutdown`]).
    ///
    /// # Errors
    /// The store's close error.
    pub async fn close(&self) -> io::Result<()> {
        current(&self.db).close().await.map_err(io_err)
    }

    /// Whether the store holds no key at all (not even the applied log id).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key` in the applied state.
    ///
    /// # Errors
    /// The store's read errors.
    pub async fn get(&self, key: &str) -> io::Result<Option<String>> {
        loop {
            let db = current(&self.db);
            match db.get(data_key(key)).await {
                Ok(v) => {
                    return v
                        .map(|b| {
                            String::from_utf8(b.to_vec())
                                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                        })
                        .transpose()
                }
                // The generation was replaced by a snapshot install meanwhile: read the new one.
                Err(ringcask::Error::Closed) if current(&self.db).path() != db.path() => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

fn generation_dir(root: &Path, g: u64) -> PathBuf {
    root.join(format!("sm-{g}"))
}

async fn open_generation(root: &Path, g: u64) -> io::Result<Db> {
    Db::open(
        generation_dir(root, g),
        Options::default().sync(SyncPolicy::Never),
    )
    .await
    .map_err(io_err)
}

/// Makes generation `g` the live one: `CURRENT.tmp` written, fsynced and renamed.
fn commit_generation(root: &Path, g: u64) -> io::Result<()> {
    use std::io::Write;
    let tmp = root.join("CURRENT.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(g.to_string().as_bytes())?;
    f.sync_all()?;
    let dest = root.join("CURRENT");
    std::fs::rename(&tmp, &dest)?;
    snapshot_file::sync_dir(&dest)
}

/// Removes the generations `CURRENT` does not name (an install cut short, or the one an
/// install replaced).
fn remove_other_generations(root: &Path, live: u64) -> io::Result<()> {
    for e in std::fs::read_dir(root)? {
        let e = e?;
        let name = e.file_name();
        let Some(g) = name.to_str().and_then(|n| n.strip_prefix("sm-")) else {
            continue;
        };
        if g.parse::<u64>().is_ok_and(|g| g != live) {
            std::fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

/// Builds snapshots from a point-in-time view of the state machine.
pub struct SnapshotBuilder {
    db: Db,
    dest: PathBuf,
    publish: Arc<std::sync::Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // The state the snapshot covers must survive a crash: the log before it may be purged.
        self.db.sync().await.map_err(io_err)?;
        let view = self.db.snapshot();
        let last_log_id = match view.get(APPLIED).await.map_err(io_err)? {
            Some(b) => decode::<Option<LogId>>("applied log id", &b)?,
            None => None,
        };
        let last_membership = match view.get(MEMBERSHIP).await.map_err(io_err)? {
            Some(b) => decode("membership", &b)?,
            None => StoredMembership::default(),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let dir = self.dest.parent().unwrap_or(Path::new("."));
        let tmp = snapshot_file::temp_path(dir);
        // The file is written and fsynced on a blocking thread, a batch at a time (at most two
        // batches in memory): an executor thread blocked on the disk for the seconds a large
        // snapshot's fsync takes delays heartbeats and starts elections.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(bytes::Bytes, bytes::Bytes)>>(1);
        let (writer_tmp, writer_meta) = (tmp.clone(), meta.clone());
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = Writer::create(&writer_tmp, &writer_meta)?;
            while let Some(batch) = rx.blocking_recv() {
                for (k, v) in batch {
                    w.record(&k[1..], &v)?;
                }
            }
            w.finish()
        });
        let mut iter = view.iter_prefix([DATA]);
        let mut batch = Vec::with_capacity(INSTALL_BATCH);
        let mut streamed = Ok(());
        while let Some(item) = iter.next().await {
            match item {
                Ok(kv) => batch.push(kv),
                Err(e) => {
                    streamed = Err(io_err(e));
                    break;
                }
            }
            if batch.len() >= INSTALL_BATCH
                && tx
                    .send(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(INSTALL_BATCH),
                    ))
                    .await
                    .is_err()
            {
                break; // the writer failed: its error is returned below
            }
        }
        if streamed.is_ok() && !batch.is_empty() {
            let _ = tx.send(batch).await;
        }
        drop(tx);
        let written = writer.await.map_err(io::Error::other)?;
        if let Err(e) = streamed.and(written) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let (publish, dest, m) = (self.publish.clone(), self.dest.clone(), meta.clone());
        let snapshot =
            tokio::task::spawn_blocking(move || snapshot_file::publish(&publish, &tmp, &dest, &m))
                .await
                .map_err(io::Error::other)??;
        Ok(Snapshot { meta, snapshot })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = File;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id;
            let response = match &entry.payload {
                EntryPayload::Blank => {
                    let b = WriteBatch::new().put(APPLIED, encode(&Some(log_id))?);
                    self.db().write(b).await.map_err(io_err)?;
                    Response::default()
                }
                EntryPayload::Normal(req) => self.apply_request(req, &log_id).await?,
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(log_id), m.clone());
                    let b = WriteBatch::new()
                        .put(APPLIED, encode(&Some(log_id))?)
                        .put(MEMBERSHIP, encode(&stored)?);
                    self.db().write(b).await.map_err(io_err)?;
                    self.membership = stored;
                    Response::default()
                }
            };
            self.applied = Some(log_id);
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db(),
            dest: self.snapshot_path(),
            publish: self.publish.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: File,
    ) -> Result<(), io::Error> {
        let next = self.generation + 1;
        let dir = generation_dir(&self.root, next);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let db = open_generation(&self.root, next).await?;
        let loaded = load_snapshot(&db, &mut snapshot, meta).await;
        let closed = db.close().await.map_err(io_err);
        loaded.and(closed)?;
        commit_generation(&self.root, next)?;
        // Keep a copy as our current snapshot (the file handed in may be another node's),
        // copied and fsynced on a blocking thread (it may take seconds).
        let tmp = snapshot_file::temp_path(&self.root);
        let (publish, dest, m) = (self.publish.clone(), self.snapshot_path(), meta.clone());
        tokio::task::spawn_blocking(move || {
            use std::io::Seek;
            snapshot.seek(io::SeekFrom::Start(0))?;
            let mut out = File::create(&tmp)?;
            io::copy(&mut snapshot, &mut out)?;
            out.sync_all()?;
            snapshot_file::publish(&publish, &tmp, &dest, &m).map(drop)
        })
        .await
        .map_err(io::Error::other)??;
        let fresh = open_generation(&self.root, next).await?;
        let old = std::mem::replace(
            &mut *self.db.write().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        old.close().await.map_err(io_err)?;
        remove_other_generations(&self.root, next)?;
        self.generation = next;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let mut file = match File::open(self.snapshot_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = snapshot_file::read_meta(&mut file)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: file,
        }))
    }
}

/// Loads the records of `file` into the fresh store `db`, then the applied log id and
/// membership of `meta`, and syncs. The file is read on a blocking thread, a batch at a time
/// (at most two batches in memory); its CRC is verified at the end, and on any error the
/// caller discards `db`.
async fn load_snapshot(db: &Db, file: &mut File, meta: &SnapshotMeta) -> io::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(Vec<u8>, Vec<u8>)>>(1);
    let mut reader_file = file.try_clone()?;
    let reader = tokio::task::spawn_blocking(move || {
        snapshot_file::read_records(&mut reader_file, INSTALL_BATCH, |batch| {
            tx.blocking_send(batch)
                .map_err(|_| io::Error::other("snapshot install stopped"))
        })
    });
    while let Some(batch) = rx.recv().await {
        let b = batch.into_iter().fold(WriteBatch::new(), |b, (k, v)| {
            b.put([&[DATA][..], &k].concat(), v)
        });
        db.write(b).await.map_err(io_err)?;
    }
    let meta_in_file = reader.await.map_err(io::Error::other)??;
    if meta_in_file.last_log_id != meta.last_log_id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot file does not match its metadata",
        ));
    }
    let b = WriteBatch::new()
        .put(APPLIED, encode(&meta.last_log_id)?)
        .put(MEMBERSHIP, encode(&meta.last_membership)?);
    db.write(b).await.map_err(io_err)?;
    db.sync().await.map_err(io_err)
}
