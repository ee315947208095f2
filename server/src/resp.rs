//! The Redis serialization protocol: requests (arrays of bulk strings, or inline commands typed
//! into a terminal) parsed from a connection's buffer with every length bounded, and replies
//! encoded in RESP2 or, after `HELLO 3`, RESP3.
//!
//! A request is parsed only once it is complete: a length prefix is checked against the limits
//! before anything is awaited or allocated for it, so a huge announced length costs nothing but
//! an error reply.

use bytes::{BufMut, Bytes, BytesMut};

/// Bounds on what one request may announce.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string (one key or value), bytes.
    pub max_bulk_bytes: usize,
    /// Most elements in one request array.
    pub max_array_len: usize,
    /// Longest inline command line, bytes.
    pub max_inline_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_bytes: 64 << 20,
            max_array_len: 1 << 20,
            max_inline_bytes: 64 << 10,
        }
    }
}

/// A request that breaks the protocol. The connection answers it with an error and closes (as
/// Redis does), since the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn perr<T>(msg: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(msg.into()))
}

/// Parses one request from the front of `buf` and removes it. `Ok(None)`: the request is not
/// complete yet (nothing is removed). An empty inline line is skipped and yields an empty
/// request.
///
/// # Errors
/// [`ProtocolError`] for a malformed request or a length over `limits`.
pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        return parse_inline(buf, limits);
    }
    let Some((count, mut pos)) = read_int_line(buf, 1, limits.max_inline_bytes)? else {
        return Ok(None);
    };
    if count > limits.max_array_len as i64 {
        return perr("invalid multibulk length");
    }
    let count = usize::try_from(count).unwrap_or(0); // *-1 and *0 are empty requests
    let mut spans = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&c) => return perr(format!("expected '$', got '{}'", c as char)),
        }
        let Some((len, at)) = read_int_line(buf, pos + 1, limits.max_inline_bytes)? else {
            return Ok(None);
        };
        if len < 0 || len > limits.max_bulk_bytes as i64 {
            return perr("invalid bulk length");
        }
        let len = len as usize;
        if buf.len() < at + len + 2 {
            return Ok(None);
        }
        if &buf[at + len..at + len + 2] != b"\r\n" {
            return perr("bulk string not followed by CRLF");
        }
        spans.push((at, len));
        pos = at + len + 2;
    }
    let frame = buf.split_to(pos).freeze();
    Ok(Some(
        spans
            .into_iter()
            .map(|(at, len)| frame.slice(at..at + len))
            .collect(),
    ))
}

/// The integer on the line starting at `from` and the offset after its CRLF.
fn read_int_line(
    buf: &[u8],
    from: usize,
    max_line: usize,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = buf.get(from..).unwrap_or_default();
    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > max_line.min(32) {
            return perr("length line too long");
        }
        return Ok(None);
    };
    let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
    let n = std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok());
    match n {
        Some(n) => Ok(Some((n, from + nl + 1))),
        None => perr("invalid length"),
    }
}

/// An inline command: one line, words split on whitespace, with `"..."` (backslash escapes)
/// and `'...'` quoting as redis-cli types them.
fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline_bytes {
            return perr("too big inline request");
        }
        return Ok(None);
    };
    if nl > limits.max_inline_bytes {
        return perr("too big inline request");
    }
    let line = buf.split_to(nl + 1);
    let line = line[..nl].strip_suffix(b"\r").unwrap_or(&line[..nl]);
    let words = split_words(line)?;
    if words.len() > limits.max_array_len {
        return perr("too many arguments in inline request");
    }
    Ok(Some(words))
}

fn split_words(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut word = Vec::new();
        match line[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return perr("unbalanced quotes in request");
                    };
                    i += 1;
                    if c == q {
                        break;
                    }
                    if c == b'\\' && q == b'"' {
                        let (byte, used) = unescape(&line[i..]);
                        word.push(byte);
                        i += used;
                    } else {
                        word.push(c);
                    }
                }
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return perr("unbalanced quotes in request");
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    word.push(line[i]);
                    i += 1;
                }
            }
        }
        words.push(Bytes::from(word));
    }
    Ok(words)
}

/// The byte a backslash escape stands for, and how many bytes after the backslash it used.
fn unescape(rest: &[u8]) -> (u8, usize) {
    let hex = |c: u8| (c as char).to_digit(16);
    match rest {
        [b'x', a, b, ..] if hex(*a).is_some() && hex(*b).is_some() => {
            let v = hex(*a).unwrap_or(0) * 16 + hex(*b).unwrap_or(0);
            (v as u8, 3)
        }
        [b'n', ..] => (b'\n', 1),
        [b'r', ..] => (b'\r', 1),
        [b't', ..] => (b'\t', 1),
        [b'b', ..] => (8, 1),
        [b'a', ..] => (7, 1),
        [c, ..] => (*c, 1),
        [] => (b'\\', 0),
    }
}

/// A reply, encoded for the connection's protocol version.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A status line (`+...`).
    Simple(String),
    /// An error line; the text starts with its code (`ERR ...`, `NOAUTH ...`).
    Error(String),
    /// An integer.
    Int(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// No value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// No array: `*-1` in RESP2, `_` in RESP3.
    NilArray,
    /// An array.
    Array(Vec<Reply>),
    /// A map: a flat array of keys and values in RESP2, `%` in RESP3.
    Map(Vec<(Reply, Reply)>),
    /// Text for humans (INFO): a bulk string in RESP2, verbatim `=` in RESP3.
    Verbatim(String),
}

impl Reply {
    /// `ERR <msg>`.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// A bulk string of `s`.
    pub fn bulk(s: impl Into<Bytes>) -> Reply {
        Reply::Bulk(s.into())
    }

    /// A bulk string, or nil.
    pub fn opt(v: Option<Bytes>) -> Reply {
        v.map_or(Reply::Nil, Reply::Bulk)
    }

    /// Appends the encoding for protocol version `proto` (2 or 3) to `out`.
    pub fn encode(&self, proto: u8, out: &mut BytesMut) {
        let resp3 = proto >= 3;
        match self {
            Reply::Ok => out.put_slice(b"+OK\r\n"),
            Reply::Simple(s) => line(out, b'+', &one_line(s)),
            Reply::Error(s) => line(out, b'-', &one_line(s)),
            Reply::Int(n) => line(out, b':', &n.to_string()),
            Reply::Bulk(b) => blob(out, b'$', b),
            Reply::Nil if resp3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.put_slice(b"_\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', &items.len().to_string());
                items.iter().for_each(|r| r.encode(proto, out));
            }
            Reply::Map(pairs) => {
                if resp3 {
                    line(out, b'%', &pairs.len().to_string());
                } else {
                    line(out, b'*', &(pairs.len() * 2).to_string());
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Verbatim(s) if resp3 => blob(out, b'=', format!("txt:{s}").as_bytes()),
            Reply::Verbatim(s) => blob(out, b'$', s.as_bytes()),
        }
    }
}

fn line(out: &mut BytesMut, tag: u8, s: &str) {
    out.reserve(s.len() + 3);
    out.put_u8(tag);
    out.put_slice(s.as_bytes());
    out.put_slice(b"\r\n");
}

fn blob(out: &mut BytesMut, tag: u8, b: &[u8]) {
    line(out, tag, &b.len().to_string());
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

/// A status or error text never carries a line break (it would end the line early).
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        s.replace(['\r', '\n'], " ").into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(req) = parse(&mut buf, &Limits::default())? {
            out.push(req);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    #[test]
    fn arrays_of_bulk_strings_parse_binary_safe_and_pipelined() {
        let got = parse_all(b"*2\r\n$3\r\nGET\r\n$3\r\na\r\n\r\n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(got[0], vec![Bytes::from("GET"), Bytes::from("a\r\n")]);
        assert_eq!(got[1], vec![Bytes::from("PING")]);
    }

    #[test]
    fn an_incomplete_request_waits_at_every_cut_and_then_parses_whole() {
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(parse(&mut buf, &Limits::default()), Ok(None), "cut {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at cut {cut}");
            buf.extend_from_slice(&full[cut..]);
            let req = parse(&mut buf, &Limits::default()).unwrap().unwrap();
            assert_eq!(req.len(), 3);
            assert_eq!(req[2], Bytes::from("value"));
        }
    }

    #[test]
    fn announced_lengths_over_the_limits_are_errors_before_any_payload() {
        let limits = Limits {
            max_bulk_bytes: 100,
            max_array_len: 4,
            max_inline_bytes: 16,
        };
        let cases: [&[u8]; 7] = [
            b"*1\r\n$10000000000\r\n",
            b"*5\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$abc\r\n",
            b"*1\r\n:5\r\n",
            b"*1\r\n$3\r\nabcXY",
            b"GET aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ];
        for case in cases {
            let mut buf = BytesMut::from(case);
            assert!(parse(&mut buf, &limits).is_err(), "{case:?}");
        }
        let mut buf = BytesMut::from(&b"*1\r\n$99999999999999999999999999999999999999"[..]);
        assert!(parse(&mut buf, &limits).is_err(), "an endless length line");
    }

    #[test]
    fn inline_commands_split_words_and_quotes() {
        let got = parse_all(b"SET k \"a b\\x41\\n\" 'c d'\r\n\r\nPING\n").unwrap();
        assert_eq!(
            got[0],
            vec![
                Bytes::from("SET"),
                Bytes::from("k"),
                Bytes::from("a bA\n"),
                Bytes::from("c d")
            ]
        );
        assert!(got[1].is_empty());
        assert_eq!(got[2], vec![Bytes::from("PING")]);
        assert!(parse_all(b"SET \"open\r\n").is_err());
        // Found by the fuzzer: an inline line is bounded in words as an array is.
        let limits = Limits {
            max_array_len: 4,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&b"a b c d e\r\n"[..]);
        assert!(parse(&mut buf, &limits).is_err());
    }

    #[test]
    fn replies_encode_in_resp2_and_resp3() {
        let enc = |r: &Reply, p| {
            let mut out = BytesMut::new();
            r.encode(p, &mut out);
            out
        };
        assert_eq!(enc(&Reply::Nil, 2), &b"$-1\r\n"[..]);
        assert_eq!(enc(&Reply::Nil, 3), &b"_\r\n"[..]);
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]);
        assert_eq!(enc(&map, 2), &b"*2\r\n$1\r\na\r\n:1\r\n"[..]);
        assert_eq!(enc(&map, 3), &b"%1\r\n$1\r\na\r\n:1\r\n"[..]);
        assert_eq!(enc(&Reply::err("x\r\ny"), 2), &b"-ERR x  y\r\n"[..]);
        assert_eq!(
            enc(&Reply::Verbatim("hi".into()), 3),
            &b"=6\r\ntxt:hi\r\n"[..]
        );
    }
}
