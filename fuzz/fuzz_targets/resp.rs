#![no_main]
//! The server's RESP request parser on arbitrary bytes, fed in two pieces (the first byte picks
//! the cut): it never panics, every request it returns respects the limits and consumed bytes,
//! an incomplete request consumes nothing, and the same bytes parse the same way whole.
//! The parser module is compiled in from the server crate's source, so this target needs only
//! `bytes`, not the server's dependencies.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

#[path = "../../server/src/resp.rs"]
#[allow(dead_code)]
mod resp;

const LIMITS: resp::Limits = resp::Limits {
    max_bulk_bytes: 64,
    max_array_len: 16,
    max_inline_bytes: 128,
};

/// Parses everything complete in `buf`; the requests, and whether it ended in an error.
fn drain(buf: &mut BytesMut) -> (Vec<Vec<bytes::Bytes>>, bool) {
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        match resp::parse(buf, &LIMITS) {
            Ok(Some(req)) => {
                assert!(buf.len() < before, "a request consumed no bytes");
                assert!(req.len() <= LIMITS.max_array_len);
                let inline_max = LIMITS.max_inline_bytes;
                assert!(req.iter().all(|a| a.len() <= LIMITS.max_bulk_bytes.max(inline_max)));
                out.push(req);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete request consumed bytes");
                return (out, false);
            }
            Err(_) => return (out, true),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(data.len());
    let mut whole = BytesMut::from(data);
    let (all, whole_err) = drain(&mut whole);
    let mut split = BytesMut::from(&data[..cut]);
    let (mut got, err) = drain(&mut split);
    if !err {
        split.extend_from_slice(&data[cut..]);
        let (rest, rest_err) = drain(&mut split);
        got.extend(rest);
        if !rest_err && !whole_err {
            assert_eq!(got, all, "feeding in two pieces changed the parse");
        }
    }
});
