//! Keyspace commands: DEL, EXISTS, expiry (EXPIRE family, TTL, PERSIST), KEYS, SCAN, DBSIZE,
//! TYPE, RANDOMKEY, FLUSHDB.

use std::time::SystemTime;

use bytes::Bytes;
use ringcask::{Db, Expiry, Update, WriteBatch};

use super::{db_err, deadline, int, syntax, word, wrote, Outcome, Res};
use crate::glob;
use crate::resp::Reply;

/// The commands this module runs.
pub(super) const NAMES: &[&str] = &[
    "del",
    "unlink",
    "exists",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "ttl",
    "pttl",
    "persist",
    "keys",
    "scan",
    "dbsize",
    "type",
    "randomkey",
    "flushdb",
    "flushall",
];

/// Keys deleted per batch by FLUSHDB.
const FLUSH_BATCH: usize = 4096;

pub(super) async fn run(db: &Db, name: &str, a: &[Bytes]) -> Res<Outcome> {
    Ok(match name {
        "del" | "unlink" => {
            let mut n = 0;
            for key in a {
                let existed = db
                    .update(key, |c| (Update::Delete, c.is_some()))
                    .await
                    .map_err(db_err)?;
                n += i64::from(existed);
            }
            wrote(Reply::Int(n))
        }
        "exists" => Reply::Int(a.iter().filter(|k| db.contains_key(k)).count() as i64).into(),
        "expire" | "pexpire" | "expireat" | "pexpireat" => return expire(db, name, a).await,
        "ttl" | "pttl" => {
            let n = match db.ttl(&a[0]) {
                None => -2,
                Some(None) => -1,
                Some(Some(d)) if name == "pttl" => d.as_millis() as i64,
                Some(Some(d)) => (d.as_millis() as i64 + 500) / 1000,
            };
            Reply::Int(n).into()
        }
        "persist" => {
            let changed = db
                .update(&a[0], |c| match c {
                    Some(c) if c.expires_at.is_some() => {
                        let value = c.value.clone();
                        let expiry = Expiry::Never;
                        (Update::Put { value, expiry }, 1)
                    }
                    _ => (Update::Keep, 0),
                })
                .await
                .map_err(db_err)?;
            wrote(Reply::Int(changed))
        }
        "keys" => {
            let keys = db.keys().into_iter();
            let keys = keys.filter(|k| glob::matches(&a[0], k));
            Reply::Array(keys.map(Reply::Bulk).collect()).into()
        }
        "scan" => return scan(db, a),
        "dbsize" => Reply::Int(db.len() as i64).into(),
        "type" => {
            let t = if db.contains_key(&a[0]) {
                "string"
            } else {
                "none"
            };
            Reply::Simple(t.into()).into()
        }
        "randomkey" => Reply::opt(random_key(db)).into(),
        "flushdb" | "flushall" => {
            if a.len() > 1
                || a.first()
                    .is_some_and(|w| !matches!(word(w).as_str(), "SYNC" | "ASYNC"))
            {
                return Err(syntax());
            }
            flush(db).await?;
            wrote(Reply::Ok)
        }
        _ => return Err(Reply::err("command not handled")),
    })
}

/// `EXPIRE key n [NX|XX|GT|LT]` and its millisecond and absolute forms. A time not in the
/// future deletes the key.
async fn expire(db: &Db, name: &str, a: &[Bytes]) -> Res<Outcome> {
    let n = int(&a[1])?;
    let at = deadline(n, name.starts_with('p'), name.ends_with("at"), name)?;
    let flag = match a.get(2).map(|w| word(w)) {
        None => None,
        Some(w) if a.len() == 3 && matches!(w.as_str(), "NX" | "XX" | "GT" | "LT") => Some(w),
        Some(_) => return Err(syntax()),
    };
    let set = db
        .update(&a[0], |c| {
            let Some(c) = c else {
                return (Update::Keep, 0);
            };
            // No expiry counts as an infinite time to live (Redis's rule for GT and LT).
            let ok = match (flag.as_deref(), c.expires_at) {
                (None, _) => true,
                (Some("NX"), cur) => cur.is_none(),
                (Some("XX"), cur) => cur.is_some(),
                (Some("GT"), cur) => cur.is_some_and(|cur| at > cur),
                (Some(_), cur) => cur.is_none_or(|cur| at < cur),
            };
            if !ok {
                return (Update::Keep, 0);
            }
            if at <= SystemTime::now() {
                return (Update::Delete, 1);
            }
            let value = c.value.clone();
            let expiry = Expiry::At(at);
            (Update::Put { value, expiry }, 1)
        })
        .await
        .map_err(db_err)?;
    Ok(wrote(Reply::Int(set)))
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]`: the store's stateless cursor, so a key
/// present for the whole iteration is returned exactly once.
fn scan(db: &Db, a: &[Bytes]) -> Res<Outcome> {
    let cursor = std::str::from_utf8(&a[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Reply::err("invalid cursor"))?;
    let (mut pattern, mut count, mut only_strings) = (None, 10usize, true);
    let mut i = 1;
    while i < a.len() {
        let arg = a.get(i + 1).ok_or_else(syntax)?;
        match word(&a[i]).as_str() {
            "MATCH" => pattern = Some(arg.clone()),
            "COUNT" => {
                let n = int(arg)?;
                if n < 1 {
                    return Err(syntax());
                }
                count = n.min(1 << 20) as usize;
            }
            "TYPE" => only_strings = word(arg) == "STRING",
            _ => return Err(syntax()),
        }
        i += 2;
    }
    let (next, keys) = db.scan(cursor, count);
    let keys = keys
        .into_iter()
        .filter(|k| only_strings && pattern.as_ref().is_none_or(|p| glob::matches(p, k)))
        .map(Reply::Bulk)
        .collect();
    Ok(Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)]).into())
}

/// A key picked at random: a scan page from a random position, else the first key.
fn random_key(db: &Db) -> Option<Bytes> {
    if db.is_empty() {
        return None;
    }
    let seed =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
    for attempt in 0..4u64 {
        // A scan cursor is a hash position; any value below 2^38 is one.
        let cursor = seed.rotate_left(attempt as u32 * 16) & ((1 << 38) - 1);
        if let Some(k) = db.scan(cursor, 1).1.into_iter().next() {
            return Some(k);
        }
    }
    let mut cursor = 0;
    loop {
        let (next, keys) = db.scan(cursor, 64);
        if let Some(k) = keys.into_iter().next() {
            return Some(k);
        }
        if next == 0 {
            return None;
        }
        cursor = next;
    }
}

/// Deletes every key in batches, then syncs: every key present when FLUSHDB began is deleted
/// durably when it replies (a key written while it runs may survive it).
async fn flush(db: &Db) -> Res<()> {
    let mut cursor = 0;
    loop {
        let (next, keys) = db.scan(cursor, FLUSH_BATCH);
        if !keys.is_empty() {
            let batch = keys.iter().fold(WriteBatch::new(), |b, k| b.delete(k));
            db.write(batch).await.map_err(db_err)?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    db.sync().await.map_err(db_err)
}
