//! The writer thread's group writes under the direct-IO writer, on its own ring.
//!
//! When several callers wait for a sync, the writer thread forms their groups (see
//! [`super::group`]): it has their requests queued and starts the next group as soon as the
//! last one completes, one wake-up between groups. It writes them through its own ring, whose
//! completions it reaps itself: measured against the same writes on the shared ring (whose
//! reaper thread then has to wake the writer thread), `io_bench durable --value 4096
//! --io-mode direct --apart false`, 3 rounds side by side: C=8 17.9k / 20.4k / 24.2k puts/s
//! on the shared ring against 32.0k / 28.7k / 21.9k on its own, C=32 54.6k / 57.2k / 59.3k
//! against 67.4k / 59.2k / 72.5k.

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::appender::Appender;
use super::lead::Leads;
use super::tail::{pad_into, Flush};
use crate::io::{DirectBuf, IoFile, Registered};

/// Group writes of up to this many bytes go from a buffer registered with the writer's ring
/// (larger ones from a plain allocation): at 4 KiB a record, 256 records.
const REGISTERED_GROUP_SPAN: usize = 1 << 20;

/// The writer thread's registered buffers: one for each file's group write (a datafile's and
/// its value file's are in flight together). Must run on the writer's ring.
pub(crate) fn register_writer_buffers() -> Option<Rc<Registered>> {
    Registered::register(&[(2, REGISTERED_GROUP_SPAN)]).map(Rc::new)
}

/// The writer thread's handles of the active file and of its value file (on its own ring),
/// beside the direct-IO writers they write for.
pub(crate) struct OwnFiles {
    /// `O_DIRECT | O_DSYNC`: a group that writes only the datafile.
    pub(super) data: IoFile,
    /// Under [`crate::GroupFlush::Once`], the datafile `O_DIRECT` only: a group that writes
    /// both files writes both plain, then makes them durable with one `fdatasync`.
    pub(super) data_plain: Option<IoFile>,
    /// `O_DIRECT`, and `O_DSYNC` unless under [`crate::GroupFlush::Once`].
    pub(super) vals: Option<IoFile>,
}

impl OwnFiles {
    /// Under [`crate::GroupFlush::Once`], after a group's plain writes completed: one
    /// `fdatasync`, of the datafile when the group wrote it (its flush of the device's cache
    /// covers the value file's write too), and of the value file when the group wrote only
    /// it or wrote past the blocks written before (its metadata then needs committing).
    fn flush_once(&self, wrote_data: bool, vals_needs_own: bool) -> io::Result<()> {
        let (Some(data), Some(vals)) = (&self.data_plain, &self.vals) else {
            // Not reached: a one-flush group has both. Never acknowledge plain writes unsynced.
            return Err(io::Error::other(
                "a one-flush group without its plain descriptors",
            ));
        };
        if wrote_data {
            data.sync_data_now()?;
        }
        if vals_needs_own || !wrote_data {
            vals.sync_data_now()
        } else {
            vals.note_flushed();
            Ok(())
        }
    }
}

/// The tail's unwritten blocks copied into a registered buffer of `regs` when one fits, else a
/// plain aligned allocation: the buffer, the offset the write starts at, the span.
fn fill(regs: Option<&Registered>, span: usize, bytes: &[u8]) -> (DirectBuf, usize, usize) {
    let mut buf = regs
        .filter(|_| span <= REGISTERED_GROUP_SPAN)
        .and_then(|r| r.take(span))
        .unwrap_or_else(|| DirectBuf::plain(Vec::new(), span));
    if buf.len() < buf.aligned_at() + span {
        buf = DirectBuf::plain(Vec::new(), span);
    }
    let at = buf.aligned_at();
    pad_into(&mut buf[at..at + span], bytes);
    (buf, at, span)
}

/// One file's part of a group: its buffer, where its write starts, its span, what it covers,
/// and where it ends.
type Part = (DirectBuf, usize, usize, Flush, u64);

/// Writes one file's part of a group; its result, whether a registered buffer carried it,
/// what it covers and where it ends.
async fn write_part(
    f: Option<&IoFile>,
    p: Option<Part>,
) -> Option<(io::Result<()>, bool, Flush, u64)> {
    let (f, (buf, at, span, done, end)) = (f?, p?);
    let (res, buf) = f.write_direct(buf, at, span, done.base).await;
    Some((res, buf.is_fixed(), done, end))
}

impl Appender {
    /// [`Appender::sync_group`] made by the writer thread through its own ring (`own`): the
    /// group write left in flight by a caller first, then one group of everything appended.
    pub(super) async fn sync_group_own(
        &self,
        leads: &mut Leads,
        own: &OwnFiles,
        regs: Option<&Registered>,
    ) -> io::Result<()> {
        self.settle_group(leads).await?;
        let upto = self.appended_seq.load(Ordering::Acquire);
        if !self.dirty.swap(false, Ordering::AcqRel) {
            self.synced_seq.fetch_max(upto, Ordering::AcqRel);
            return Ok(());
        }
        // The datafile's tail is copied before the value file's: every value a record in the
        // datafile's write refers to is in the value file's write.
        let mut parts: [Option<Part>; 2] = [None, None];
        for (i, (d, tail)) in [
            (&mut leads.data, &self.tail),
            (&mut leads.vals, &self.vals_tail),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(d) = d {
                parts[i] = d
                    .copy_tail(tail, |span, bytes| fill(regs, span, bytes))
                    .map(|((buf, at, span), done, end)| (buf, at, span, done, end));
            }
        }
        for (d, part) in [&mut leads.data, &mut leads.vals].into_iter().zip(&parts) {
            if let (Some(d), Some(p)) = (d, part) {
                d.make_room(p.4).await;
            }
        }
        // One flush for both files where the value file's write is in the group.
        let once = own.data_plain.is_some() && parts[1].is_some();
        let vals_needs_own = match (&leads.vals, &parts[1]) {
            (Some(d), Some(p)) => !d.written_through(p.4),
            _ => false,
        };
        let wrote_data = parts[0].is_some();
        let data_file = match &own.data_plain {
            Some(plain) if once => plain,
            _ => &own.data,
        };
        let [data, vals] = parts;
        let (a, b) = futures::future::join(
            write_part(Some(data_file), data),
            write_part(own.vals.as_ref(), vals),
        )
        .await;
        let ring = self.group.ring();
        let mut registered = 0;
        let mut wrote = Vec::with_capacity(2);
        for (d, (res, fixed, done, end), tail) in [
            (&mut leads.data, a, &self.tail),
            (&mut leads.vals, b, &self.vals_tail),
        ]
        .into_iter()
        .filter_map(|(d, r, t)| Some((d.as_mut()?, r?, t)))
        {
            self.failed(res)?;
            registered += u64::from(fixed);
            wrote.push((d, done, end, tail));
        }
        if once {
            self.failed(own.flush_once(wrote_data, vals_needs_own))?;
            self.shared.syncs_one_flush.add(1);
        }
        for (d, done, end, tail) in wrote {
            d.wrote(tail, done, end, ring).await;
        }
        self.shared.syncs.add(1);
        self.shared.writes_registered.add(registered);
        self.group_done(upto);
        Ok(())
    }
}
