//! Connection and server commands: PING, ECHO, QUIT, SELECT, HELLO, AUTH, CLIENT, COMMAND,
//! CONFIG, INFO, SAVE, BGSAVE, BGREWRITEAOF, MERGE, SHUTDOWN.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{db_err, lossy, word, Outcome, Res, Session, COMMANDS};
use crate::glob;
use crate::resp::Reply;
use crate::server::{Shared, SyncMode};

/// The Redis version whose protocol and commands this server speaks (tools read it from INFO
/// and HELLO to pick features).
pub(crate) const REDIS_VERSION: &str = "7.0.0";

pub(super) async fn run(
    shared: &Shared,
    session: &mut Session,
    name: &str,
    a: &[Bytes],
) -> Res<Outcome> {
    Ok(match name {
        "ping" => match a {
            [] => Reply::Simple("PONG".into()),
            [msg] => Reply::Bulk(msg.clone()),
            _ => return Err(Reply::err("wrong number of arguments for 'ping' command")),
        }
        .into(),
        "echo" => Reply::Bulk(a[0].clone()).into(),
        "quit" => Outcome {
            reply: Reply::Ok,
            wrote: false,
            close: true,
        },
        "select" => match &a[0][..] {
            b"0" => Reply::Ok.into(),
            _ => Reply::err("DB index is out of range").into(),
        },
        "hello" => return hello(shared, session, a),
        "auth" => {
            let (user, pass) = match a {
                [pass] => (&b"default"[..], pass),
                [user, pass] => (&user[..], pass),
                _ => return Err(Reply::err("syntax error")),
            };
            auth(shared, session, user, pass)?;
            Reply::Ok.into()
        }
        "client" => return client(session, a),
        "command" => return command(a),
        "config" => return config(shared, a),
        "info" => Reply::Verbatim(info(shared, a)).into(),
        "save" => {
            shared.db.sync().await.map_err(db_err)?;
            Reply::Ok.into()
        }
        "bgsave" => {
            let db = shared.db.clone();
            tokio::spawn(async move { db.sync().await });
            Reply::Simple("Background saving started".into()).into()
        }
        "bgrewriteaof" => {
            let db = shared.db.clone();
            tokio::spawn(async move {
                if let Err(e) = db.merge().await {
                    tracing::warn!("background merge failed: {e}");
                }
            });
            Reply::Simple("Background append only file rewriting started".into()).into()
        }
        "merge" => {
            let r = shared.db.merge().await.map_err(db_err)?;
            Reply::Map(vec![
                (Reply::bulk("inputs"), Reply::Int(r.inputs.len() as i64)),
                (Reply::bulk("outputs"), Reply::Int(r.outputs.len() as i64)),
                (
                    Reply::bulk("reclaimed_bytes"),
                    Reply::Int(r.reclaimed_bytes as i64),
                ),
                (
                    Reply::bulk("records_copied"),
                    Reply::Int(r.records_copied as i64),
                ),
            ])
            .into()
        }
        "shutdown" => {
            if a.iter().any(|w| word(w) == "ABORT") {
                return Err(Reply::err("There is no shutdown in progress."));
            }
            tracing::info!("SHUTDOWN from client {}", session.id);
            shared.begin_shutdown();
            Outcome {
                reply: Reply::Ok,
                wrote: false,
                close: true,
            }
        }
        _ => return Err(Reply::err("command not handled")),
    })
}

fn auth(shared: &Shared, session: &mut Session, user: &[u8], pass: &[u8]) -> Res<()> {
    let Some(want) = &shared.config.requirepass else {
        return Err(Reply::err(
            "AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        ));
    };
    if user != b"default" || !constant_time_eq(pass, want.as_bytes()) {
        return Err(Reply::Error(
            "WRONGPASS invalid username-password pair or user is disabled.".into(),
        ));
    }
    session.authed = true;
    Ok(())
}

/// Compares without returning early on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
fn hello(shared: &Shared, session: &mut Session, a: &[Bytes]) -> Res<Outcome> {
    let mut proto = session.proto;
    if let Some(v) = a.first() {
        proto = match &v[..] {
            b"2" => 2,
            b"3" => 3,
            _ => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
        };
    }
    let mut i = 1;
    while i < a.len() {
        match word(&a[i]).as_str() {
            "AUTH" if i + 2 < a.len() => {
                auth(shared, session, &a[i + 1], &a[i + 2])?;
                i += 3;
            }
            "SETNAME" if i + 1 < a.len() => {
                session.name = Some(a[i + 1].clone());
                i += 2;
            }
            _ => return Err(Reply::err("syntax error")),
        }
    }
    if !session.authed {
        return Err(Reply::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time"
                .into(),
        ));
    }
    session.proto = proto;
    let pair = |k: &str, v: Reply| (Reply::bulk(k.to_string()), v);
    Ok(Reply::Map(vec![
        pair("server", Reply::bulk("ringcask")),
        pair("version", Reply::bulk(REDIS_VERSION)),
        pair("proto", Reply::Int(proto.into())),
        pair("id", Reply::Int(session.id as i64)),
        pair("mode", Reply::bulk("standalone")),
        pair("role", Reply::bulk("master")),
        pair("modules", Reply::Array(vec![])),
    ])
    .into())
}

fn client(session: &mut Session, a: &[Bytes]) -> Res<Outcome> {
    Ok(match (word(&a[0]).as_str(), &a[1..]) {
        ("ID", []) => Reply::Int(session.id as i64),
        ("GETNAME", []) => Reply::opt(session.name.clone()),
        ("SETNAME", [name]) => {
            if name.iter().any(|c| !(b'!'..=b'~').contains(c)) {
                return Err(Reply::err(
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            session.name = (!name.is_empty()).then(|| name.clone());
            Reply::Ok
        }
        ("SETINFO", [_, _]) => Reply::Ok,
        ("INFO", []) => Reply::Verbatim(format!(
            "id={} name={} resp={}\n",
            session.id,
            lossy(session.name.as_deref().unwrap_or_default()),
            session.proto
        )),
        (sub, _) => {
            return Err(Reply::err(format!(
                "unknown subcommand or wrong number of arguments for 'CLIENT|{sub}' command"
            )))
        }
    }
    .into())
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS [name...]`.
fn command(a: &[Bytes]) -> Res<Outcome> {
    let pick = |names: &[Bytes]| -> Vec<&'static super::Spec> {
        if names.is_empty() {
            return COMMANDS.iter().collect();
        }
        let names: Vec<String> = names.iter().map(|n| word(n).to_lowercase()).collect();
        COMMANDS
            .iter()
            .filter(|s| names.iter().any(|n| n == s.name))
            .collect()
    };
    let info = |s: &super::Spec| {
        let flags = s
            .flags
            .iter()
            .map(|f| Reply::Simple(f.to_string()))
            .collect();
        Reply::Array(vec![
            Reply::bulk(s.name),
            Reply::Int(s.arity.into()),
            Reply::Array(flags),
            Reply::Int(s.keys.0.into()),
            Reply::Int(s.keys.1.into()),
            Reply::Int(s.keys.2.into()),
        ])
    };
    let reply = match a.first().map(|w| word(w)).as_deref() {
        None => Reply::Array(COMMANDS.iter().map(info).collect()),
        Some("COUNT") => Reply::Int(COMMANDS.len() as i64),
        Some("INFO") => Reply::Array(pick(&a[1..]).into_iter().map(info).collect()),
        Some("DOCS") => Reply::Map(
            pick(&a[1..])
                .into_iter()
                .map(|s| {
                    let doc = Reply::Map(vec![
                        (Reply::bulk("summary"), Reply::bulk(s.summary)),
                        (Reply::bulk("since"), Reply::bulk("1.0.0")),
                        (Reply::bulk("group"), Reply::bulk(s.group)),
                    ]);
                    (Reply::bulk(s.name), doc)
                })
                .collect(),
        ),
        Some(sub) => {
            return Err(Reply::err(format!(
                "unknown subcommand '{sub}'. Try COMMAND HELP."
            )))
        }
    };
    Ok(reply.into())
}

/// `CONFIG GET pattern...` over the settings tools ask for; `CONFIG RESETSTAT`.
fn config(shared: &Shared, a: &[Bytes]) -> Res<Outcome> {
    match word(&a[0]).as_str() {
        "GET" if a.len() > 1 => {}
        "RESETSTAT" => return Ok(Reply::Ok.into()),
        "SET" => {
            return Err(Reply::err(
                "CONFIG SET is not supported: restart with new flags",
            ))
        }
        _ => return Err(Reply::err("syntax error")),
    }
    let c = &shared.config;
    let (appendonly, fsync) = match c.sync {
        SyncMode::Always => ("yes", "always"),
        SyncMode::IntervalMs(_) => ("yes", "everysec"),
        SyncMode::Never => ("yes", "no"),
    };
    let settings = [
        ("save", String::new()),
        ("appendonly", appendonly.into()),
        ("appendfsync", fsync.into()),
        ("databases", "1".into()),
        ("maxclients", c.maxclients.to_string()),
        ("bind", c.bind.ip().to_string()),
        ("port", c.bind.port().to_string()),
        (
            "timeout",
            c.idle_timeout.map_or(0, |d| d.as_secs()).to_string(),
        ),
        ("proto-max-bulk-len", c.limits.max_bulk_bytes.to_string()),
        ("maxmemory", "0".into()),
        ("dir", shared.db.path().display().to_string()),
    ];
    let pairs = settings
        .into_iter()
        .filter(|(k, _)| {
            a[1..]
                .iter()
                .any(|p| glob::matches(&p.to_ascii_lowercase(), k.as_bytes()))
        })
        .map(|(k, v)| (Reply::bulk(k), Reply::bulk(v)))
        .collect();
    Ok(Reply::Map(pairs).into())
}

/// `INFO [section...]`: server, clients, memory, persistence, stats, keyspace.
fn info(shared: &Shared, a: &[Bytes]) -> String {
    let want = |s: &str| {
        a.is_empty()
            || a.iter().any(|w| {
                let w = word(w);
                w == "ALL" || w == "EVERYTHING" || w == "DEFAULT" || w.eq_ignore_ascii_case(s)
            })
    };
    let st = shared.db.stats();
    let mut out = String::new();
    if want("server") {
        let up = shared.started.elapsed().as_secs();
        let _ = write!(
            out,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nringcask_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{up}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            shared.config.bind.port(),
        );
    }
    if want("clients") {
        let n = shared.clients.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{n}\r\nmaxclients:{}\r\n\r\n",
            shared.config.maxclients
        );
    }
    if want("memory") {
        let _ = write!(
            out,
            "# Memory\r\nused_memory_rss:{}\r\nvalue_cache_bytes:{}\r\n\r\n",
            rss_bytes(),
            st.value_cache_bytes
        );
    }
    if want("persistence") {
        let _ = write!(
            out,
            "# Persistence\r\nloading:0\r\nsync_policy:{}\r\naof_enabled:1\r\ntotal_bytes:{}\r\ndead_bytes:{}\r\nfragmentation:{:.3}\r\nmerges:{}\r\nmerge_reclaimed_bytes:{}\r\nsyncs:{}\r\nrecovered_keys:{}\r\nrecovered_from_snapshot:{}\r\n\r\n",
            shared.config.sync, st.total_bytes, st.dead_bytes, st.fragmentation, st.merges, st.merge_reclaimed_bytes, st.syncs,
            st.recovery.keys, u8::from(st.recovery.from_snapshot),
        );
    }
    if want("stats") {
        let _ = write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\nputs:{}\r\ndeletes:{}\r\ngets:{}\r\nreads_cached:{}\r\n\r\n",
            shared.connections.load(Ordering::Relaxed),
            shared.commands.load(Ordering::Relaxed),
            shared.rejected.load(Ordering::Relaxed),
            st.puts, st.deletes, st.gets, st.reads_cached,
        );
    }
    if want("keyspace") {
        let _ = write!(out, "# Keyspace\r\n");
        if st.keys > 0 {
            let _ = write!(out, "db0:keys={},expires=0,avg_ttl=0\r\n", st.keys);
        }
    }
    out
}

/// This process's resident set size, from /proc (0 where it cannot be read).
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
