//! A lone durable writer leads its own group commit, for the direct-IO writer on a shared ring.
//!
//! Through the writer thread a durable put waits on three wake-ups besides its write: its sync
//! request wakes the writer thread, the write's completion wakes it again, and its answer
//! wakes the caller (on this class of machine each costs 15–25 µs, against a 4 KiB
//! `O_DSYNC` write of ~80–120 µs). A caller that is the only durable writer (it and the
//! [`LEAD_AFTER`] syncs before it each found nobody else waiting) makes the group write
//! itself: it takes the active file's direct-IO writers ([`GroupCommit`]), copies the tails
//! out and submits their `O_DIRECT | O_DSYNC` writes to the store's shared ring from its own
//! thread; the completion wakes it through the ring's reaper (with `Options::reap_on_tokio`,
//! a task on the caller's own runtime: one wake-up in all, as for fio).
//!
//! With other durable writers waiting, the writer thread forms the groups on its own ring
//! (`own`), as before: measured at stop 24, callers handing the lead to each other lost to it
//! from two writers on (DESIGN §5, "Group commit led by the callers").
//!
//! The writer thread takes the same lock for everything that writes the active file or
//! replaces it — its group writes, rotation, sealing and close — so a leader's group write
//! never meets a trim or a file being swapped. A leader whose future is dropped mid-write
//! leaves its write with the file ([`super::direct::DirectFile`]), for the next writer to
//! wait for. Without a shared ring (the `pread` backend, or a ring the kernel refused) callers
//! ask the writer thread as before.

use std::sync::atomic::{AtomicBool, Ordering};

use super::appender::Appender;
use super::lead::{Leads, Waiting, LEAD_AFTER};
use crate::{Error, Result};

/// Sets the flag again when dropped while its second field is true.
struct Redirty<'a>(&'a AtomicBool, bool);

impl Drop for Redirty<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::Release);
        }
    }
}

impl Appender {
    /// Counts the caller as waiting for a sync until the guard is dropped; it must live until
    /// the caller's record is durable (led by [`Appender::sync_led`] or not).
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        let before = self.group.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting {
            count: &self.group.waiting,
            first: before == 0,
        }
    }

    /// Makes every record up to `seq` durable by leading a group write, when this caller is
    /// a lone durable writer: it found nobody else waiting for a sync (`alone`, from
    /// [`Appender::waiting`]), as did the [`LEAD_AFTER`] syncs before it. `Ok(false)` when it
    /// does not lead — other callers wait too (the writer thread forms their groups), no shared
    /// ring, another group write holds the files, or the active file has no direct-IO writer:
    /// the caller asks the writer thread instead.
    pub(crate) async fn sync_led(&self, seq: u64, alone: &Waiting<'_>) -> Result<bool> {
        if self.group.ring.get().is_none() {
            return Ok(false);
        }
        let lone = &self.group.lone;
        if !alone.first {
            lone.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        let streak = lone.load(Ordering::Relaxed);
        lone.store(streak.saturating_add(1), Ordering::Relaxed);
        if streak < LEAD_AFTER {
            return Ok(false);
        }
        if let Some(p) = self.poisoned() {
            return Err(Error::Poisoned(p));
        }
        let Ok(mut leads) = self.group.files.try_lock() else {
            return Ok(false);
        };
        if leads.data.is_none() {
            return Ok(false);
        }
        self.shared.syncs_led.add(1);
        self.sync_group(&mut leads, seq).await.map_err(Error::Io)?;
        Ok(self.is_synced(seq))
    }

    /// Makes every record appended so far durable, or at least every record up to `want`:
    /// first the group write in flight, if any (left by a leader whose future was dropped; if
    /// it covers `want`, that is all); then one group write of the active file's tails (both
    /// files' writes in flight together), if anything was appended since the last; moves
    /// `synced_seq` past each. A failure poisons the store. The caller holds the lock.
    pub(super) async fn sync_group(&self, leads: &mut Leads, want: u64) -> std::io::Result<()> {
        if leads.in_flight.is_some() {
            self.settle_group(leads).await?;
            if self.is_synced(want) {
                return Ok(());
            }
        }
        // Loaded first: every record up to `upto` is in the tails when they are copied below.
        let upto = self.appended_seq.load(Ordering::Acquire);
        if self.dirty.swap(false, Ordering::AcqRel) {
            // Set again unless this group's write completes: a leader whose future is dropped
            // mid-write leaves its records to the next group.
            let mut redirty = Redirty(&self.dirty, true);
            self.start_group(leads, upto).await?;
            self.settle_group(leads).await?;
            redirty.1 = false;
        }
        self.synced_seq.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Starts the group write of both tails, covering every record up to `upto`: the
    /// datafile's first, then the value file's, so that every value a record in the datafile's
    /// write refers to is in the value file's (the value is pushed to its tail before the
    /// record). Both stay in flight together.
    async fn start_group(&self, leads: &mut Leads, upto: u64) -> std::io::Result<()> {
        let ring = self.group.ring();
        let mut started = false;
        if let Some(d) = &mut leads.data {
            started |= self.failed(d.start(&self.tail, ring).await)?;
        }
        if let Some(v) = &mut leads.vals {
            started |= self.failed(v.start(&self.vals_tail, ring).await)?;
        }
        if started {
            leads.in_flight = Some(upto);
        } else {
            self.synced_seq.fetch_max(upto, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Waits for the group write in flight (both files') and moves `synced_seq` past it.
    pub(super) async fn settle_group(&self, leads: &mut Leads) -> std::io::Result<()> {
        let Some(upto) = leads.in_flight else {
            return Ok(());
        };
        let ring = self.group.ring();
        let mut registered = 0;
        if let Some(d) = &mut leads.data {
            if let Some(r) = d.settle(&self.tail, ring).await {
                registered += u64::from(self.failed(r)?);
            }
        }
        if let Some(v) = &mut leads.vals {
            if let Some(r) = v.settle(&self.vals_tail, ring).await {
                registered += u64::from(self.failed(r)?);
            }
        }
        leads.in_flight = None;
        self.shared.syncs.add(1);
        self.shared.writes_registered.add(registered);
        self.group_done(upto);
        Ok(())
    }

    /// A group write made every record up to `upto` durable.
    pub(super) fn group_done(&self, upto: u64) {
        self.synced_seq.fetch_max(upto, Ordering::AcqRel);
    }

    /// Passes `r` on; a failure first poisons the store.
    pub(super) fn failed<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        r.map_err(|e| {
            let e = crate::io::context(e, "writing a group of records to the active file");
            self.poison(&e);
            e
        })
    }
}
