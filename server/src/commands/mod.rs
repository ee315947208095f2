//! The command table and dispatch: arity and authentication are checked here, then each
//! command runs against the store. Every read-modify-write goes through the store's
//! conditional-write API ([`ringcask::Db::update`], [`ringcask::Db::write_if_absent`]), never a
//! read followed by a separate write.

mod admin;
mod keyspace;
mod strings;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::resp::Reply;
use crate::server::Shared;

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    /// The client's id (`CLIENT ID`).
    pub id: u64,
    /// Protocol version of replies: 2, or 3 after `HELLO 3`.
    pub proto: u8,
    /// Whether the client has authenticated (always, when no password is set).
    pub authed: bool,
    /// `CLIENT SETNAME`.
    pub name: Option<Bytes>,
}

impl Session {
    /// A fresh session; `authed` when the server has no password.
    pub fn new(id: u64, authed: bool) -> Session {
        Session {
            id,
            proto: 2,
            authed,
            name: None,
        }
    }
}

/// What running a command produced.
#[derive(Debug)]
pub struct Outcome {
    /// The reply to send.
    pub reply: Reply,
    /// Whether the command wrote to the store (its reply waits for the sync under
    /// `--sync always`).
    pub wrote: bool,
    /// Close the connection after sending the reply (`QUIT`, `SHUTDOWN`).
    pub close: bool,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        Outcome {
            reply,
            wrote: false,
            close: false,
        }
    }
}

/// A write command's reply.
fn wrote(reply: Reply) -> Outcome {
    Outcome {
        reply,
        wrote: true,
        close: false,
    }
}

/// The result type of command bodies: an error reply short-circuits.
type Res<T> = std::result::Result<T, Reply>;

/// A store error as a reply.
fn db_err(e: ringcask::Error) -> Reply {
    match e {
        ringcask::Error::EmptyKey => Reply::err("empty keys are not supported"),
        e => Reply::err(e),
    }
}

/// Static facts about a command, for `COMMAND` and the arity check.
pub(crate) struct Spec {
    pub name: &'static str,
    /// Redis's arity: `n` exactly n arguments (the name counted), `-n` at least n.
    pub arity: i32,
    pub flags: &'static [&'static str],
    /// First key, last key (-1: the last argument), step; 0s for no keys.
    pub keys: (i32, i32, i32),
    pub group: &'static str,
    pub summary: &'static str,
}

macro_rules! spec {
    ($name:literal, $arity:expr, [$($flag:literal),*], $keys:expr, $group:literal, $summary:literal) => {
        Spec { name: $name, arity: $arity, flags: &[$($flag),*], keys: $keys, group: $group, summary: $summary }
    };
}

/// Every command served.
pub(crate) static COMMANDS: &[Spec] = &[
    spec!(
        "get",
        2,
        ["readonly", "fast"],
        (1, 1, 1),
        "string",
        "Returns the string value of a key."
    ),
    spec!(
        "set",
        -3,
        ["write"],
        (1, 1, 1),
        "string",
        "Sets the string value of a key, with options for expiry and conditions."
    ),
    spec!(
        "setnx",
        3,
        ["write", "fast"],
        (1, 1, 1),
        "string",
        "Sets a key only if it does not exist."
    ),
    spec!(
        "setex",
        4,
        ["write"],
        (1, 1, 1),
        "string",
        "Sets a key with an expiry in seconds."
    ),
    spec!(
        "psetex",
        4,
        ["write"],
        (1, 1, 1),
        "string",
        "Sets a key with an expiry in milliseconds."
    ),
    spec!(
        "getset",
        3,
        ["write", "fast"],
        (1, 1, 1),
        "string",
        "Sets a key and returns its previous value."
    ),
    spec!(
        "getdel",
        2,
        ["write", "fast"],
        (1, 1, 1),
        "string",
        "Returns a key's value and deletes it."
    ),
    spec!(
        "getex",
        -2,
        ["write", "fast"],
        (1, 1, 1),
        "string",
        "Returns a key's value and changes its expiry."
    ),
    spec!(
        "mget",
        -2,
        ["readonly", "fast"],
        (1, -1, 1),
        "string",
        "Returns the values of keys."
    ),
    spec!(
        "mset",
        -3,
        ["write"],
        (1, -1, 2),
        "string",
        "Sets keys atomically."
    ),
    spec!(
        "msetnx",
        -3,
        ["write"],
        (1, -1, 2),
        "string",
        "Sets keys atomically only if none exists."
    ),
    spec!(
        "del",
        -2,
        ["write"],
        (1, -1, 1),
        "keyspace",
        "Deletes keys."
    ),
    spec!(
        "unlink",
        -2,
        ["write", "fast"],
        (1, -1, 1),
        "keyspace",
        "Deletes keys."
    ),
    spec!(
        "exists",
        -2,
        ["readonly", "fast"],
        (1, -1, 1),
        "keyspace",
        "Counts the keys that exist."
    ),
    spec!(
        "incr",
        2,
        ["write", "fast"],
        (1, 1, 1),
        "string",
        "Adds one to a key's integer value."
    ),
    spec!(
        "incrby",
        3,
        ["write", "fast"],
        (1, 1, 1),
        "string",
        "Adds to a key's integer value."
    ),
    spec!(
        "decr",
        2,
        ["write", "fast"],
        (1, 1, 1),
        "string",
        "Subtracts one from a key's integer value."
    ),
    spec!(
        "decrby",
        3,
        ["write", "fast"],
        (1, 1, 1),
        "string",
        "Subtracts from a key's integer value."
    ),
    spec!(
        "append",
        3,
        ["write", "fast"],
        (1, 1, 1),
        "string",
        "Appends to a key's value."
    ),
    spec!(
        "strlen",
        2,
        ["readonly", "fast"],
        (1, 1, 1),
        "string",
        "Returns the length of a key's value."
    ),
    spec!(
        "expire",
        -3,
        ["write", "fast"],
        (1, 1, 1),
        "keyspace",
        "Sets a key's time to live in seconds."
    ),
    spec!(
        "pexpire",
        -3,
        ["write", "fast"],
        (1, 1, 1),
        "keyspace",
        "Sets a key's time to live in milliseconds."
    ),
    spec!(
        "expireat",
        -3,
        ["write", "fast"],
        (1, 1, 1),
        "keyspace",
        "Sets a key's expiry as a Unix time in seconds."
    ),
    spec!(
        "pexpireat",
        -3,
        ["write", "fast"],
        (1, 1, 1),
        "keyspace",
        "Sets a key's expiry as a Unix time in milliseconds."
    ),
    spec!(
        "ttl",
        2,
        ["readonly", "fast"],
        (1, 1, 1),
        "keyspace",
        "Returns a key's time to live in seconds."
    ),
    spec!(
        "pttl",
        2,
        ["readonly", "fast"],
        (1, 1, 1),
        "keyspace",
        "Returns a key's time to live in milliseconds."
    ),
    spec!(
        "persist",
        2,
        ["write", "fast"],
        (1, 1, 1),
        "keyspace",
        "Removes a key's expiry."
    ),
    spec!(
        "keys",
        2,
        ["readonly"],
        (0, 0, 0),
        "keyspace",
        "Returns the keys matching a pattern."
    ),
    spec!(
        "scan",
        -2,
        ["readonly"],
        (0, 0, 0),
        "keyspace",
        "Iterates over the keys."
    ),
    spec!(
        "dbsize",
        1,
        ["readonly", "fast"],
        (0, 0, 0),
        "server",
        "Returns the number of keys."
    ),
    spec!(
        "type",
        2,
        ["readonly", "fast"],
        (1, 1, 1),
        "keyspace",
        "Returns the type of a key's value."
    ),
    spec!(
        "randomkey",
        1,
        ["readonly"],
        (0, 0, 0),
        "keyspace",
        "Returns a random key."
    ),
    spec!(
        "flushdb",
        -1,
        ["write"],
        (0, 0, 0),
        "server",
        "Deletes every key, durably."
    ),
    spec!(
        "flushall",
        -1,
        ["write"],
        (0, 0, 0),
        "server",
        "Deletes every key, durably."
    ),
    spec!(
        "ping",
        -1,
        ["fast"],
        (0, 0, 0),
        "connection",
        "Returns PONG or the message."
    ),
    spec!(
        "echo",
        2,
        ["fast"],
        (0, 0, 0),
        "connection",
        "Returns the message."
    ),
    spec!(
        "quit",
        -1,
        ["fast"],
        (0, 0, 0),
        "connection",
        "Closes the connection."
    ),
    spec!(
        "select",
        2,
        ["fast"],
        (0, 0, 0),
        "connection",
        "Selects database 0 (the only one)."
    ),
    spec!(
        "hello",
        -1,
        ["fast", "no-auth"],
        (0, 0, 0),
        "connection",
        "Handshakes: protocol version, authentication, name."
    ),
    spec!(
        "auth",
        -2,
        ["fast", "no-auth"],
        (0, 0, 0),
        "connection",
        "Authenticates the connection."
    ),
    spec!(
        "client",
        -2,
        [],
        (0, 0, 0),
        "connection",
        "CLIENT ID, SETNAME, GETNAME, SETINFO, INFO."
    ),
    spec!(
        "command",
        -1,
        [],
        (0, 0, 0),
        "server",
        "COMMAND, COMMAND COUNT, COMMAND DOCS, COMMAND INFO."
    ),
    spec!(
        "config",
        -2,
        [],
        (0, 0, 0),
        "server",
        "CONFIG GET; CONFIG RESETSTAT."
    ),
    spec!(
        "info",
        -1,
        [],
        (0, 0, 0),
        "server",
        "Returns information and statistics about the server."
    ),
    spec!(
        "save",
        1,
        [],
        (0, 0, 0),
        "server",
        "Forces everything written to stable storage."
    ),
    spec!(
        "bgsave",
        -1,
        [],
        (0, 0, 0),
        "server",
        "Forces everything written to stable storage in the background."
    ),
    spec!(
        "bgrewriteaof",
        1,
        [],
        (0, 0, 0),
        "server",
        "Starts a merge (compaction) in the background."
    ),
    spec!(
        "merge",
        1,
        [],
        (0, 0, 0),
        "server",
        "Runs a merge (compaction) and reports what it did."
    ),
    spec!(
        "shutdown",
        -1,
        [],
        (0, 0, 0),
        "server",
        "Stops the server and closes the store cleanly."
    ),
];

/// The name of every command served, lower case.
pub fn command_names() -> impl Iterator<Item = &'static str> {
    COMMANDS.iter().map(|s| s.name)
}

/// Runs one request (`args[0]` is the command name).
pub async fn execute(shared: &Shared, session: &mut Session, args: Vec<Bytes>) -> Outcome {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let Some(spec) = COMMANDS.iter().find(|s| s.name == name) else {
        return Reply::err(unknown(&args)).into();
    };
    let n = args.len() as i32;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        return Reply::err(format!("wrong number of arguments for '{name}' command")).into();
    }
    if !session.authed && !spec.flags.contains(&"no-auth") && name != "quit" {
        return Reply::Error("NOAUTH Authentication required.".into()).into();
    }
    let db = &shared.db;
    let a = &args[1..];
    let res = if strings::NAMES.contains(&spec.name) {
        strings::run(db, spec.name, a).await
    } else if keyspace::NAMES.contains(&spec.name) {
        keyspace::run(db, spec.name, a).await
    } else {
        admin::run(shared, session, spec.name, a).await
    };
    res.unwrap_or_else(Outcome::from)
}

fn unknown(args: &[Bytes]) -> String {
    let mut msg = format!(
        "unknown command '{}', with args beginning with:",
        lossy(&args[0])
    );
    for a in args.iter().skip(1).take(8) {
        msg.push_str(&format!(" '{}'", lossy(a)));
    }
    msg
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.chars().take(128).collect()
}

/// An argument as an integer, Redis's way (no spaces, no `+`).
fn int(arg: &[u8]) -> Res<i64> {
    parse_int(arg).ok_or_else(|| Reply::err("value is not an integer or out of range"))
}

fn parse_int(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with('+') || s.len() > 20 {
        return None;
    }
    s.parse().ok()
}

/// An argument, upper-cased, for matching option words.
fn word(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

fn syntax() -> Reply {
    Reply::err("syntax error")
}

/// The absolute time `n` units from now (`ms`: milliseconds, else seconds), or from the Unix
/// epoch when `absolute`; an error for a time that does not fit.
fn deadline(n: i64, ms: bool, absolute: bool, cmd: &str) -> Res<SystemTime> {
    let bad = || Reply::err(format!("invalid expire time in '{cmd}' command"));
    let ms_total = if ms { Some(n) } else { n.checked_mul(1000) }.ok_or_else(bad)?;
    let base = if absolute {
        UNIX_EPOCH
    } else {
        SystemTime::now()
    };
    if ms_total >= 0 {
        base.checked_add(Duration::from_millis(ms_total as u64))
    } else {
        base.checked_sub(Duration::from_millis(ms_total.unsigned_abs()))
    }
    .ok_or_else(bad)
}
