//! `O_DIRECT` reads of the aligned blocks that hold a range of a file.

use std::io;
use std::os::unix::fs::FileExt;

use super::{Handle, IoFile, DIRECT_ALIGN};
use crate::fault::read_point;
use crate::io::{DirectBuf, Registered};

/// Bytes of the aligned blocks that hold `len` bytes at `offset`.
fn direct_span(len: usize, offset: u64) -> usize {
    let first = offset / DIRECT_ALIGN * DIRECT_ALIGN;
    let end = (offset + len as u64).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    (end - first) as usize
}

impl IoFile {
    /// Reads exactly `len` bytes at `offset` of a file opened with [`IoFile::open_direct`]: one
    /// read of the aligned blocks that hold them, into a registered buffer of `regs` when one
    /// is free and large enough (else an aligned stretch of an allocation), then the bytes
    /// copied out. Returns them and whether a registered buffer was used. A short file is
    /// `UnexpectedEof`.
    pub(crate) async fn read_direct(
        &self,
        len: usize,
        offset: u64,
        regs: Option<&Registered>,
    ) -> io::Result<(Vec<u8>, bool)> {
        read_point(self.fault.as_deref())?;
        let span = direct_span(len, offset);
        let uring = matches!(self.handle, Handle::Uring(_));
        let buf = match regs.filter(|_| uring).and_then(|r| r.take(span)) {
            Some(b) => b,
            None => DirectBuf::Plain(self.aligned(Vec::new(), span)),
        };
        let (buf, from) = self.read_aligned(buf, len, offset).await?;
        Ok((buf[from..from + len].to_vec(), buf.is_fixed()))
    }

    /// [`IoFile::read_direct`] into `reuse` (a plain buffer whose allocation is kept from one
    /// read to the next), without copying the bytes out: returns the buffer and where the
    /// `len` bytes at `offset` start in it.
    pub(crate) async fn read_direct_into(
        &self,
        reuse: Vec<u8>,
        len: usize,
        offset: u64,
    ) -> io::Result<(Vec<u8>, usize)> {
        read_point(self.fault.as_deref())?;
        let buf = DirectBuf::Plain(self.aligned(reuse, direct_span(len, offset)));
        match self.read_aligned(buf, len, offset).await? {
            (DirectBuf::Plain(v), from) => Ok((v, from)),
            (DirectBuf::Fixed(_), _) => Err(io::Error::other("a plain read came back registered")),
        }
    }

    /// `v` emptied and made ready for an aligned read of `span` bytes: it starts at an aligned
    /// address past `v.len()`. Only the bytes before it are zeroed (the ring reads into
    /// capacity past the length, and marks what it filled as initialised); for `pread`, which
    /// reads into an initialised slice, the span is zeroed too.
    fn aligned(&self, mut v: Vec<u8>, span: usize) -> Vec<u8> {
        v.clear();
        v.reserve(span + DIRECT_ALIGN as usize);
        let at = v.as_ptr().align_offset(DIRECT_ALIGN as usize);
        let uring = matches!(self.handle, Handle::Uring(_));
        v.resize(if uring { at } else { at + span }, 0);
        v
    }

    /// Reads the aligned blocks holding the `len` bytes at `offset` into `buf` (prepared by
    /// [`IoFile::aligned`], or a registered buffer), resubmitting after a short read; returns
    /// it and where those bytes start in it.
    async fn read_aligned(
        &self,
        mut buf: DirectBuf,
        len: usize,
        offset: u64,
    ) -> io::Result<(DirectBuf, usize)> {
        use tokio_uring::buf::BoundedBuf;
        let first = offset / DIRECT_ALIGN * DIRECT_ALIGN;
        let span = direct_span(len, offset);
        let at = buf.aligned_at();
        let mut got = 0usize;
        let want = (offset - first) as usize + len;
        while got < want {
            let (from, to, pos) = (at + got, at + span, first + got as u64);
            let n = match (&self.handle, buf) {
                (Handle::Uring(f), DirectBuf::Plain(v)) => {
                    let (res, slice) = f.read_at(v.slice(from..to), pos).await;
                    buf = DirectBuf::Plain(slice.into_inner());
                    res?
                }
                (Handle::Uring(f), DirectBuf::Fixed(b)) => {
                    let (res, slice) = f.read_fixed_at(b.slice(from..to), pos).await;
                    buf = DirectBuf::Fixed(slice.into_inner());
                    res?
                }
                (Handle::Pread(f), b) => {
                    buf = b;
                    f.read_at(&mut buf[from..to], pos)?
                }
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        Ok((buf, at + (offset - first) as usize))
    }
}

#[cfg(test)]
mod tests {
    use crate::io::{Access, IoFile, Runtime};
    use crate::options::IoBackendKind;

    /// One buffer carried through reads of different sizes and offsets (aligned or not, a
    /// larger one then a smaller one) returns exactly the file's bytes each time, directly and
    /// through the page cache, on both backends.
    #[test]
    fn a_reused_buffer_returns_exactly_the_bytes_asked_for() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 << 20u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let reads = [
            (4097, 1 << 20),
            (10, 5000),
            (2 << 20, 4096),
            (123, 700_000),
            (0, 1),
        ];
        for kind in [IoBackendKind::IoUring, IoBackendKind::Pread] {
            let rt = Runtime::new(kind).expect("runtime");
            rt.block_on(async {
                let direct = IoFile::open_direct(kind, &path, None).expect("open direct");
                let buffered =
                    IoFile::open_read(kind, &path, Access::Sequential, None).expect("open");
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for (off, len) in reads {
                    let (buf, from) = direct.read_direct_into(a, len, off).await.expect("read");
                    let want = &data[off as usize..off as usize + len];
                    assert_eq!(
                        &buf[from..from + len],
                        want,
                        "{kind:?} direct {len} at {off}"
                    );
                    a = buf;
                    b = buffered.read_exact_into(b, len, off).await.expect("read");
                    assert_eq!(&b[..], want, "{kind:?} buffered {len} at {off}");
                }
            });
        }
    }
}
