//! String commands: GET, SET and its variants, MGET/MSET/MSETNX, counters, APPEND, STRLEN.

use bytes::{Bytes, BytesMut};
use ringcask::{Current, Db, Expiry, Update, WriteBatch};

use super::{db_err, deadline, int, parse_int, syntax, word, wrote, Outcome, Res};
use crate::resp::Reply;

/// The commands this module runs.
pub(super) const NAMES: &[&str] = &[
    "get", "set", "setnx", "setex", "psetex", "getset", "getdel", "getex", "mget", "mset",
    "msetnx", "incr", "incrby", "decr", "decrby", "append", "strlen",
];

pub(super) async fn run(db: &Db, name: &str, a: &[Bytes]) -> Res<Outcome> {
    Ok(match name {
        "get" => Reply::opt(db.get(&a[0]).await.map_err(db_err)?).into(),
        "set" => return set(db, a).await,
        "setnx" => {
            let won = db.put_if_absent(&a[0], &a[1]).await.map_err(db_err)?;
            wrote(Reply::Int(won.into()))
        }
        "setex" | "psetex" => {
            let n = int(&a[1])?;
            if n <= 0 {
                return Err(Reply::err(format!(
                    "invalid expire time in '{name}' command"
                )));
            }
            let at = deadline(n, name == "psetex", false, name)?;
            put(db, &a[0], a[2].clone(), Expiry::At(at)).await?;
            wrote(Reply::Ok)
        }
        "getset" => {
            let old = put(db, &a[0], a[1].clone(), Expiry::Never).await?;
            wrote(Reply::opt(old))
        }
        "getdel" => {
            let old = db
                .update(&a[0], |c| (Update::Delete, c.map(|c| c.value.clone())))
                .await
                .map_err(db_err)?;
            wrote(Reply::opt(old))
        }
        "getex" => return getex(db, a).await,
        "mget" => {
            let vs = db.get_many(a).await.map_err(db_err)?;
            Reply::Array(vs.into_iter().map(Reply::opt).collect()).into()
        }
        "mset" | "msetnx" => return mset(db, name, a).await,
        "incr" | "decr" | "incrby" | "decrby" => {
            let by = if a.len() > 1 { int(&a[1])? } else { 1 };
            let by = if name.starts_with("decr") {
                by.checked_neg()
                    .ok_or_else(|| Reply::err("decrement would overflow"))?
            } else {
                by
            };
            wrote(Reply::Int(incr(db, &a[0], by).await?))
        }
        "append" => {
            let suffix = a[1].clone();
            let len = db
                .update(&a[0], |c| {
                    let mut v = BytesMut::from(c.map_or(&b""[..], |c| &c.value[..]));
                    v.extend_from_slice(&suffix);
                    let len = v.len() as i64;
                    let value = v.freeze();
                    let expiry = Expiry::Keep;
                    (Update::Put { value, expiry }, len)
                })
                .await
                .map_err(db_err)?;
            wrote(Reply::Int(len))
        }
        "strlen" => {
            let v = db.get(&a[0]).await.map_err(db_err)?;
            Reply::Int(v.map_or(0, |v| v.len() as i64)).into()
        }
        _ => return Err(Reply::err("command not handled")),
    })
}

/// Stores `value` unconditionally with `expiry`; the previous value.
async fn put(db: &Db, key: &[u8], value: Bytes, expiry: Expiry) -> Res<Option<Bytes>> {
    db.update(key, |c| {
        let value = value.clone();
        (Update::Put { value, expiry }, c.map(|c| c.value.clone()))
    })
    .await
    .map_err(db_err)
}

#[derive(Clone, Copy, PartialEq)]
enum Cond {
    Any,
    Nx,
    Xx,
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`.
async fn set(db: &Db, a: &[Bytes]) -> Res<Outcome> {
    let (key, value) = (&a[0], a[1].clone());
    let (mut cond, mut get, mut expiry) = (Cond::Any, false, None);
    let mut i = 2;
    while i < a.len() {
        let w = word(&a[i]);
        match w.as_str() {
            "NX" if cond == Cond::Any => cond = Cond::Nx,
            "XX" if cond == Cond::Any => cond = Cond::Xx,
            "GET" => get = true,
            "KEEPTTL" if expiry.is_none() => expiry = Some(Expiry::Keep),
            "EX" | "PX" | "EXAT" | "PXAT" if expiry.is_none() => {
                let n = int(a.get(i + 1).ok_or_else(syntax)?)?;
                if n <= 0 {
                    return Err(Reply::err("invalid expire time in 'set' command"));
                }
                let ms = w.starts_with('P');
                expiry = Some(Expiry::At(deadline(n, ms, w.ends_with("AT"), "set")?));
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    let expiry = expiry.unwrap_or(Expiry::Never);
    if cond == Cond::Any && !get && expiry == Expiry::Never {
        db.put(key, &value).await.map_err(db_err)?;
        return Ok(wrote(Reply::Ok));
    }
    let (applied, old) = db
        .update(key, |c: Option<&Current>| {
            let old = c.map(|c| c.value.clone());
            let ok = match cond {
                Cond::Any => true,
                Cond::Nx => c.is_none(),
                Cond::Xx => c.is_some(),
            };
            let value = value.clone();
            match ok {
                true => (Update::Put { value, expiry }, (true, old)),
                false => (Update::Keep, (false, old)),
            }
        })
        .await
        .map_err(db_err)?;
    let reply = match (get, applied) {
        (true, _) => Reply::opt(old),
        (false, true) => Reply::Ok,
        (false, false) => Reply::Nil,
    };
    Ok(wrote(reply))
}

/// `GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]`.
async fn getex(db: &Db, a: &[Bytes]) -> Res<Outcome> {
    let expiry = match a.len() {
        1 => None,
        2 if word(&a[1]) == "PERSIST" => Some(Expiry::Never),
        3 => {
            let w = word(&a[1]);
            if !matches!(w.as_str(), "EX" | "PX" | "EXAT" | "PXAT") {
                return Err(syntax());
            }
            let n = int(&a[2])?;
            if n <= 0 {
                return Err(Reply::err("invalid expire time in 'getex' command"));
            }
            let at = deadline(n, w.starts_with('P'), w.ends_with("AT"), "getex")?;
            Some(Expiry::At(at))
        }
        _ => return Err(syntax()),
    };
    let Some(expiry) = expiry else {
        return Ok(Reply::opt(db.get(&a[0]).await.map_err(db_err)?).into());
    };
    let old = db
        .update(&a[0], |c| match c {
            None => (Update::Keep, None),
            Some(c) => {
                let value = c.value.clone();
                let update = Update::Put {
                    value: value.clone(),
                    expiry,
                };
                (update, Some(value))
            }
        })
        .await
        .map_err(db_err)?;
    Ok(wrote(Reply::opt(old)))
}

/// `MSET` (atomic) and `MSETNX` (atomic, only if no key exists).
async fn mset(db: &Db, name: &str, a: &[Bytes]) -> Res<Outcome> {
    if !a.len().is_multiple_of(2) {
        return Err(Reply::err(format!(
            "wrong number of arguments for '{name}' command"
        )));
    }
    let batch = a
        .chunks(2)
        .fold(WriteBatch::new(), |b, kv| b.put(&kv[0], &kv[1]));
    if name == "mset" {
        db.write(batch).await.map_err(db_err)?;
        return Ok(wrote(Reply::Ok));
    }
    let applied = db.write_if_absent(batch).await.map_err(db_err)?;
    Ok(wrote(Reply::Int(applied.into())))
}

/// Adds `by` to the integer under `key` (absent: 0), keeping its expiry; the new value.
async fn incr(db: &Db, key: &[u8], by: i64) -> Res<i64> {
    db.update(key, |c| {
        let cur = match c {
            None => Some(0),
            Some(c) => parse_int(&c.value),
        };
        let Some(cur) = cur else {
            return (
                Update::Keep,
                Err(Reply::err("value is not an integer or out of range")),
            );
        };
        match cur.checked_add(by) {
            None => (
                Update::Keep,
                Err(Reply::err("increment or decrement would overflow")),
            ),
            Some(n) => {
                let value = Bytes::from(n.to_string());
                let expiry = Expiry::Keep;
                (Update::Put { value, expiry }, Ok(n))
            }
        }
    })
    .await
    .map_err(db_err)?
}
