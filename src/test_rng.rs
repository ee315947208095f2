//! A xorshift64 generator for unit tests: deterministic, so a failure replays from its seed.

/// xorshift64 (shifts 13, 7, 17).
pub(crate) struct TestRng(u64);

impl TestRng {
    /// A generator starting from `seed` (which must not be 0).
    pub(crate) fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    /// The next value.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
