//! Tests of the shared ring: reads in place, many in flight, registered buffers.

use super::*;
use std::io::Write;

fn file_with(bytes: &[u8]) -> (tempfile::TempDir, Arc<File>) {
    let dir = tempfile::tempdir().expect("ok");
    let path = dir.path().join("f");
    std::fs::File::create(&path)
        .expect("ok")
        .write_all(bytes)
        .expect("ok");
    (dir, Arc::new(File::open(&path).expect("ok")))
}

#[test]
fn reads_land_in_place_short_at_the_end_and_errors_come_back() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let (_d, f) = file_with(&data);
    let ring = SharedRing::new(4, "test-reaper", false, None).expect("ok");
    futures::executor::block_on(async {
        let (n, buf) = ring.read_at(f.clone(), vec![0; 200], 50, 100, 1234).await;
        assert_eq!(n.expect("ok"), 100);
        assert_eq!(&buf[50..150], &data[1234..1334]);
        assert!(buf[..50].iter().all(|&b| b == 0));
        // Past the end: short, then zero.
        let (n, _) = ring.read_at(f.clone(), vec![0; 100], 0, 100, 9950).await;
        assert_eq!(n.expect("ok"), 50);
        let (n, _) = ring.read_at(f.clone(), vec![0; 100], 0, 100, 20_000).await;
        assert_eq!(n.expect("ok"), 0);
        // Out of the buffer's bounds: refused before anything is submitted.
        let (n, _) = ring.read_at(f.clone(), vec![0; 10], 5, 10, 0).await;
        assert_eq!(n.expect_err("an error").kind(), io::ErrorKind::InvalidInput);
        // A descriptor not open for reading: the kernel's error comes back.
        let w = Arc::new(
            std::fs::OpenOptions::new()
                .append(true)
                .open(_d.path().join("f"))
                .expect("ok"),
        );
        let (n, _) = ring.read_at(w, vec![0; 10], 0, 10, 0).await;
        assert_eq!(n.expect_err("an error").raw_os_error(), Some(9));
    });
}

#[test]
fn many_reads_in_flight_from_threads_and_dropped_ones_free_their_slots() {
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (_d, f) = file_with(&data);
    let ring = Arc::new(SharedRing::new(8, "test-reaper", false, None).expect("ok"));
    // Futures dropped before completion (after their first poll submitted them) must give
    // their slots back, or the reads below would wait for permits forever.
    for i in 0..32u64 {
        let mut fut = Box::pin(ring.read_at(f.clone(), vec![0; 4096], 0, 4096, i * 4096));
        let waker = futures::task::noop_waker();
        let _ = fut.as_mut().poll(&mut Context::from_waker(&waker));
    }
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (ring, f, data) = (ring.clone(), f.clone(), data.clone());
            std::thread::spawn(move || {
                futures::executor::block_on(async {
                    let reads = (0..200u64).map(|i| {
                        let pos = (t * 200 + i) * 997 % 990_000;
                        let ring = &ring;
                        let f = f.clone();
                        async move {
                            let (n, buf) = ring.read_at(f, vec![0; 1000], 0, 1000, pos).await;
                            (n.expect("ok"), buf, pos)
                        }
                    });
                    for (n, buf, pos) in futures::future::join_all(reads).await {
                        assert_eq!(n, 1000);
                        assert_eq!(&buf[..], &data[pos as usize..pos as usize + 1000]);
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().expect("ok");
    }
    assert_eq!(ring.inner.permits.available_permits(), 8);
}

#[test]
fn registered_buffers_are_read_into_lent_once_and_given_back() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let (_d, f) = file_with(&data);
    let ring = SharedRing::new(8, "test-reaper", false, Some((2, 8192))).expect("ring");
    assert_eq!(
        ring.fixed_size(),
        Some(8192),
        "registered (this test needs the memlock)"
    );
    futures::executor::block_on(async {
        let (n, a) = ring
            .read_fixed(f.clone(), 8192, 4096)
            .await
            .expect("a buffer");
        assert_eq!(n.expect("read"), 8192);
        a.with(|b| assert_eq!(b, &data[4096..4096 + 8192]));
        let (n, b) = ring
            .read_fixed(f.clone(), 100, 99_950)
            .await
            .expect("a buffer");
        assert_eq!(n.expect("read"), 50, "short at the end of the file");
        b.with(|x| assert_eq!(&x[..50], &data[99_950..]));
        // Both lent: none for a third read, and none larger than the buffers.
        assert!(ring.read_fixed(f.clone(), 10, 0).await.is_none());
        drop(a);
        assert!(ring.read_fixed(f.clone(), 8193, 0).await.is_none());
        let (n, c) = ring
            .read_fixed(f.clone(), 4096, 0)
            .await
            .expect("given back");
        assert_eq!(n.expect("read"), 4096);
        c.with(|x| assert_eq!(&x[..4096], &data[..4096]));
    });
    // A read whose future is dropped in flight gives its buffer back at completion.
    for _ in 0..2 {
        let mut fut = Box::pin(ring.read_fixed(f.clone(), 8192, 0));
        let waker = futures::task::noop_waker();
        let _ = fut.as_mut().poll(&mut Context::from_waker(&waker));
    }
    let mut back = false;
    for _ in 0..1000 {
        let got = futures::executor::block_on(ring.read_fixed(f.clone(), 10, 0));
        if let Some((n, _)) = got {
            assert_eq!(n.expect("read"), 10);
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(back, "the dropped reads' buffers came back");
}
