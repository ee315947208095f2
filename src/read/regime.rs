//! Whether a `get` on this thread should try the page cache inline first.
//!
//! On this kernel (6.x) `preadv2(RWF_NOWAIT)` is not a free probe: when the pages are not
//! cached it starts readahead and submits the disk read on the calling thread before it answers
//! `EAGAIN`, and under load that thread waits for block-layer request slots — a caller's
//! executor thread blocked on the disk (measured with a cold 4 GiB store and 128 concurrent
//! gets: the inline attempts were a fifth of the process's CPU). There is no safe, syscall-free
//! way to ask whether a page is cached (`cachestat` and `mincore` need raw system calls or a
//! mapping), so each thread keeps a score of its recent inline attempts: misses raise it
//! quickly, hits lower it slowly, and past [`COLD_AT`] the thread sends its reads straight to
//! an io thread, trying inline again on one read in [`PROBE_EVERY`] to notice the data warming
//! up. A thread whose inline reads hit less than ~80 % of the time stops attempting them.

use std::cell::Cell;

/// Score at and above which inline attempts are skipped.
const COLD_AT: u32 = 16;
/// Highest score: a thread turns back within a few probes once its data is cached.
const MAX_SCORE: u32 = 64;
/// What a miss adds (a hit takes one off).
const MISS: u32 = 4;
/// What a probe that hit takes off.
const PROBE_HIT: u32 = 8;
/// Fewer reads than this at the io threads: inline attempts go on even in the cold regime.
const QUIET_IN_FLIGHT: usize = 8;
/// In the cold regime, one read in this many still tries inline.
const PROBE_EVERY: u32 = 16;

thread_local! {
    static SCORE: Cell<u32> = const { Cell::new(0) };
    static SKIPPED: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread's next read should try the page cache inline, with `in_flight` reads
/// at the io threads now. Below [`QUIET_IN_FLIGHT`] the device has request slots to spare, so a
/// miss starts its read at once without waiting for one — sooner than the io thread would
/// (measured with 8 concurrent cold gets: 46k/s with inline attempts, 31k/s without).
pub(crate) fn try_inline(in_flight: usize) -> bool {
    if SCORE.get() < COLD_AT || in_flight < QUIET_IN_FLIGHT {
        return true;
    }
    let n = SKIPPED.get().wrapping_add(1);
    SKIPPED.set(n);
    n.is_multiple_of(PROBE_EVERY)
}

/// Records the outcome of an inline attempt on this thread.
pub(crate) fn record(hit: bool) {
    let s = SCORE.get();
    let cold = s >= COLD_AT;
    SCORE.set(match (hit, cold) {
        (true, false) => s.saturating_sub(1),
        (true, true) => s.saturating_sub(PROBE_HIT),
        (false, _) => (s + MISS).min(MAX_SCORE),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(hit_every: u32, reads: u32) -> (u32, u32) {
        // On a fresh thread: the score is per thread.
        std::thread::spawn(move || {
            let (mut tried, mut hits) = (0, 0);
            for i in 0..reads {
                if try_inline(usize::MAX) {
                    tried += 1;
                    let hit = hit_every != 0 && i % hit_every == 0;
                    hits += u32::from(hit);
                    record(hit);
                }
            }
            (tried, hits)
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn a_thread_that_always_hits_always_tries_inline() {
        assert_eq!(run(1, 10_000), (10_000, 10_000));
    }

    #[test]
    fn a_thread_that_always_misses_tries_inline_once_in_sixteen() {
        let (tried, _) = run(0, 16_000);
        // Four misses reach the cold regime; then one probe per PROBE_EVERY reads.
        assert!((1_000..=1_010).contains(&tried), "tried {tried}");
    }

    #[test]
    fn a_thread_whose_data_warms_up_goes_back_to_inline() {
        std::thread::spawn(|| {
            for _ in 0..100 {
                if try_inline(usize::MAX) {
                    record(false);
                }
            }
            assert!(
                !(0..PROBE_EVERY - 1).all(|_| try_inline(usize::MAX)),
                "cold by now"
            );
            assert!(try_inline(0), "a quiet device is always tried");
            // Every attempt hits from now on: within a few probes every read tries again.
            let mut streak = 0;
            for _ in 0..1_000 {
                if try_inline(usize::MAX) {
                    record(true);
                    streak += 1;
                } else {
                    streak = 0;
                }
            }
            assert!(streak > 800, "inline again for the last {streak} reads");
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_thread_hitting_half_the_time_goes_cold() {
        let (tried, hits) = run(2, 16_000);
        assert!(tried < 16_000 / 2, "tried {tried}, hits {hits}");
    }
}
