//! Every command through the `redis` crate against a server in this process.

mod common;

use std::time::Duration;

use common::InProc;
use redis::{aio::MultiplexedConnection, cmd, RedisResult, Value};

async fn q<T: redis::FromRedisValue>(c: &mut MultiplexedConnection, args: &[&str]) -> T {
    try_q(c, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn try_q<T: redis::FromRedisValue>(
    c: &mut MultiplexedConnection,
    args: &[&str],
) -> RedisResult<T> {
    let mut command = cmd(args[0]);
    for a in &args[1..] {
        command.arg(*a);
    }
    command.query_async(c).await
}

/// The error text of a command that must fail.
async fn err(c: &mut MultiplexedConnection, args: &[&str]) -> String {
    match try_q::<Value>(c, args).await {
        Ok(v) => panic!("{args:?} succeeded: {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_commands_behave_as_redis() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = InProc::default(tmp.path()).await;
    let mut c = srv.client().await;
    let _: () = q(&mut c, &["SET", "k", "v"]).await;
    assert_eq!(q::<String>(&mut c, &["GET", "k"]).await, "v");
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "nope"]).await, None);
    // NX / XX / GET.
    assert_eq!(
        q::<Option<String>>(&mut c, &["SET", "k", "w", "NX"]).await,
        None
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["SET", "x", "1", "XX"]).await,
        None
    );
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "x"]).await, None);
    assert_eq!(
        q::<String>(&mut c, &["SET", "k", "w", "XX", "GET"]).await,
        "v"
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["SET", "n", "1", "GET"]).await,
        None
    );
    assert!(err(&mut c, &["SET", "k", "v", "NX", "XX"])
        .await
        .contains("syntax"));
    assert!(err(&mut c, &["SET", "k", "v", "EX", "0"])
        .await
        .contains("invalid expire"));
    assert!(err(&mut c, &["SET", "k", "v", "EX"])
        .await
        .contains("syntax"));
    // Expiry options.
    let _: () = q(&mut c, &["SET", "e", "v", "EX", "100"]).await;
    assert!((99..=100).contains(&q::<i64>(&mut c, &["TTL", "e"]).await));
    let _: () = q(&mut c, &["SET", "e", "v2", "KEEPTTL"]).await;
    assert!((99..=100).contains(&q::<i64>(&mut c, &["TTL", "e"]).await));
    let _: () = q(&mut c, &["SET", "e", "v3"]).await;
    assert_eq!(q::<i64>(&mut c, &["TTL", "e"]).await, -1);
    let _: () = q(&mut c, &["SET", "e", "v", "PX", "50000"]).await;
    assert!((49_000..=50_000).contains(&q::<i64>(&mut c, &["PTTL", "e"]).await));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now");
    let at = (now.as_secs() + 30).to_string();
    let _: () = q(&mut c, &["SET", "e", "v", "EXAT", &at]).await;
    assert!((28..=30).contains(&q::<i64>(&mut c, &["TTL", "e"]).await));
    let past = (now.as_millis() - 1000).to_string();
    let _: () = q(&mut c, &["SET", "e", "v", "PXAT", &past]).await;
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "e"]).await, None);
    // SETNX, SETEX, PSETEX, GETSET, GETDEL, GETEX.
    assert_eq!(q::<i64>(&mut c, &["SETNX", "s", "1"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["SETNX", "s", "2"]).await, 0);
    let _: () = q(&mut c, &["SETEX", "s", "10", "x"]).await;
    assert!((9..=10).contains(&q::<i64>(&mut c, &["TTL", "s"]).await));
    let _: () = q(&mut c, &["PSETEX", "s", "10000", "y"]).await;
    assert!(err(&mut c, &["SETEX", "s", "-1", "x"])
        .await
        .contains("invalid expire"));
    assert_eq!(q::<String>(&mut c, &["GETSET", "s", "z"]).await, "y");
    assert_eq!(
        q::<i64>(&mut c, &["TTL", "s"]).await,
        -1,
        "GETSET drops the expiry"
    );
    assert_eq!(q::<String>(&mut c, &["GETDEL", "s"]).await, "z");
    assert_eq!(q::<Option<String>>(&mut c, &["GETDEL", "s"]).await, None);
    let _: () = q(&mut c, &["SET", "g", "v"]).await;
    assert_eq!(q::<String>(&mut c, &["GETEX", "g", "EX", "100"]).await, "v");
    assert!(q::<i64>(&mut c, &["TTL", "g"]).await > 90);
    assert_eq!(q::<String>(&mut c, &["GETEX", "g", "PERSIST"]).await, "v");
    assert_eq!(q::<i64>(&mut c, &["TTL", "g"]).await, -1);
    assert_eq!(
        q::<Option<String>>(&mut c, &["GETEX", "nope", "EX", "5"]).await,
        None
    );
    // MGET, MSET, MSETNX.
    let _: () = q(&mut c, &["MSET", "m1", "a", "m2", "b"]).await;
    let got: Vec<Option<String>> = q(&mut c, &["MGET", "m1", "nope", "m2"]).await;
    assert_eq!(got, vec![Some("a".into()), None, Some("b".into())]);
    assert!(err(&mut c, &["MSET", "a", "b", "c"])
        .await
        .contains("wrong number"));
    assert_eq!(q::<i64>(&mut c, &["MSETNX", "m2", "x", "m3", "y"]).await, 0);
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "m3"]).await, None);
    assert_eq!(q::<i64>(&mut c, &["MSETNX", "m3", "x", "m4", "y"]).await, 1);
    // Counters.
    assert_eq!(q::<i64>(&mut c, &["INCR", "c"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["INCRBY", "c", "41"]).await, 42);
    assert_eq!(q::<i64>(&mut c, &["DECR", "c"]).await, 41);
    assert_eq!(q::<i64>(&mut c, &["DECRBY", "c", "50"]).await, -9);
    assert!(err(&mut c, &["INCR", "m1"])
        .await
        .contains("not an integer"));
    assert!(err(&mut c, &["INCRBY", "c", "x"])
        .await
        .contains("not an integer"));
    let _: () = q(&mut c, &["SET", "big", &i64::MAX.to_string()]).await;
    assert!(err(&mut c, &["INCR", "big"]).await.contains("overflow"));
    let _: () = q(&mut c, &["SET", "t", "5", "EX", "100"]).await;
    assert_eq!(q::<i64>(&mut c, &["INCR", "t"]).await, 6);
    assert!(
        q::<i64>(&mut c, &["TTL", "t"]).await > 90,
        "INCR keeps the expiry"
    );
    // APPEND, STRLEN.
    assert_eq!(q::<i64>(&mut c, &["APPEND", "ap", "Hello"]).await, 5);
    assert_eq!(q::<i64>(&mut c, &["APPEND", "ap", " World"]).await, 11);
    assert_eq!(q::<String>(&mut c, &["GET", "ap"]).await, "Hello World");
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "ap"]).await, 11);
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "nope"]).await, 0);
    // Binary-safe keys and values.
    let bin: Vec<u8> = (0..=255u8).collect();
    let _: () = cmd("SET")
        .arg(&bin[..])
        .arg(&bin[..])
        .query_async(&mut c)
        .await
        .expect("set");
    let back: Vec<u8> = cmd("GET")
        .arg(&bin[..])
        .query_async(&mut c)
        .await
        .expect("get");
    assert_eq!(back, bin);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_commands_behave_as_redis() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = InProc::default(tmp.path()).await;
    let mut c = srv.client().await;
    for i in 0..50 {
        let _: () = q(&mut c, &["SET", &format!("user:{i}"), "x"]).await;
    }
    let _: () = q(&mut c, &["SET", "other", "y"]).await;
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 51);
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "user:1", "user:1", "nope"]).await,
        2
    );
    assert_eq!(
        q::<i64>(&mut c, &["DEL", "user:1", "user:2", "nope"]).await,
        2
    );
    assert_eq!(q::<i64>(&mut c, &["UNLINK", "user:3"]).await, 1);
    assert_eq!(q::<String>(&mut c, &["TYPE", "other"]).await, "string");
    assert_eq!(q::<String>(&mut c, &["TYPE", "nope"]).await, "none");
    let mut keys: Vec<String> = q(&mut c, &["KEYS", "user:1*"]).await;
    keys.sort();
    let mut want: Vec<String> = (10..20).map(|i| format!("user:{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
    // SCAN walks every key exactly once, with MATCH and COUNT.
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    loop {
        let (next, page): (String, Vec<String>) =
            q(&mut c, &["SCAN", &cursor, "MATCH", "user:*", "COUNT", "7"]).await;
        seen.extend(page);
        if next == "0" {
            break;
        }
        cursor = next;
    }
    seen.sort();
    let mut want: Vec<String> = (4..50).map(|i| format!("user:{i}")).collect();
    want.push("user:0".into());
    want.sort();
    assert_eq!(seen, want);
    let (_, none): (String, Vec<String>) = q(&mut c, &["SCAN", "0", "TYPE", "hash"]).await;
    assert!(none.is_empty());
    assert!(err(&mut c, &["SCAN", "x"]).await.contains("invalid cursor"));
    let k: String = q(&mut c, &["RANDOMKEY"]).await;
    assert_eq!(q::<i64>(&mut c, &["EXISTS", &k]).await, 1);
    // Expiry family.
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "other", "100"]).await, 1);
    assert!((99..=100).contains(&q::<i64>(&mut c, &["TTL", "other"]).await));
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "other", "50", "GT"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "other", "50", "LT"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "other", "500", "NX"]).await, 0);
    assert_eq!(
        q::<i64>(&mut c, &["EXPIRE", "user:5", "500", "XX"]).await,
        0
    );
    assert_eq!(
        q::<i64>(&mut c, &["EXPIRE", "user:5", "500", "GT"]).await,
        0
    );
    assert_eq!(
        q::<i64>(&mut c, &["EXPIRE", "user:5", "500", "NX"]).await,
        1
    );
    assert_eq!(q::<i64>(&mut c, &["PERSIST", "user:5"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["PERSIST", "user:5"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["TTL", "user:5"]).await, -1);
    assert_eq!(q::<i64>(&mut c, &["TTL", "nope"]).await, -2);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "user:6", "100000"]).await, 1);
    assert!(q::<i64>(&mut c, &["PTTL", "user:6"]).await > 90_000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now");
    let at = (now.as_secs() + 1000).to_string();
    assert_eq!(q::<i64>(&mut c, &["EXPIREAT", "user:7", &at]).await, 1);
    assert!(q::<i64>(&mut c, &["TTL", "user:7"]).await > 990);
    let at_ms = (now.as_millis() + 1_000_000).to_string();
    assert_eq!(q::<i64>(&mut c, &["PEXPIREAT", "user:8", &at_ms]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "user:9", "-1"]).await, 1);
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "user:9"]).await,
        0,
        "a past expiry deletes"
    );
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "nope", "10"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "user:10", "30"]).await, 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "user:10"]).await, None);
    // FLUSHDB deletes everything, durably.
    let _: () = q(&mut c, &["FLUSHDB"]).await;
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 0);
    assert_eq!(q::<Option<String>>(&mut c, &["RANDOMKEY"]).await, None);
    let _: () = q(&mut c, &["SET", "gone", "1"]).await;
    let _: () = q(&mut c, &["FLUSHALL", "SYNC"]).await;
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 0);
    assert!(err(&mut c, &["FLUSHDB", "NOW"]).await.contains("syntax"));
    let _: () = q(&mut c, &["SET", "after", "1"]).await;
    drop(c);
    srv.stop().await;
    let db = ringcask::Db::open(tmp.path(), ringcask::Options::default())
        .await
        .expect("reopen");
    assert_eq!(db.keys(), vec![bytes::Bytes::from("after")]);
    db.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_commands_answer_what_clients_and_tools_ask() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = InProc::default(tmp.path()).await;
    let mut c = srv.client().await;
    assert_eq!(q::<String>(&mut c, &["PING"]).await, "PONG");
    assert_eq!(q::<String>(&mut c, &["PING", "hi"]).await, "hi");
    assert_eq!(q::<String>(&mut c, &["ECHO", "hey"]).await, "hey");
    let _: () = q(&mut c, &["SELECT", "0"]).await;
    assert!(err(&mut c, &["SELECT", "1"]).await.contains("out of range"));
    let id: i64 = q(&mut c, &["CLIENT", "ID"]).await;
    assert!(id > 0);
    let _: () = q(&mut c, &["CLIENT", "SETNAME", "me"]).await;
    assert_eq!(q::<String>(&mut c, &["CLIENT", "GETNAME"]).await, "me");
    assert!(err(&mut c, &["CLIENT", "SETNAME", "a b"])
        .await
        .contains("cannot contain"));
    let n: i64 = q(&mut c, &["COMMAND", "COUNT"]).await;
    assert_eq!(n as usize, ringcask_server::command_names().count());
    let docs: Value = q(&mut c, &["COMMAND", "DOCS", "get"]).await;
    assert!(
        format!("{docs:?}").contains("Returns the string value"),
        "{docs:?}"
    );
    let info: Value = q(&mut c, &["COMMAND", "INFO", "set"]).await;
    assert!(format!("{info:?}").contains("set"));
    let conf: Vec<String> = q(&mut c, &["CONFIG", "GET", "appendfsync"]).await;
    assert_eq!(conf, vec!["appendfsync", "always"]);
    let conf: Vec<String> = q(&mut c, &["CONFIG", "GET", "save", "appendonly"]).await;
    assert_eq!(conf, vec!["save", "", "appendonly", "yes"]);
    assert!(err(&mut c, &["CONFIG", "SET", "save", ""])
        .await
        .contains("not supported"));
    let _: () = q(&mut c, &["SET", "a", "1"]).await;
    let info: String = q(&mut c, &["INFO"]).await;
    for field in [
        "redis_version:",
        "connected_clients:1",
        "db0:keys=1",
        "total_commands_processed:",
    ] {
        assert!(info.contains(field), "{field} in {info}");
    }
    let ks: String = q(&mut c, &["INFO", "keyspace"]).await;
    assert!(!ks.contains("redis_version"));
    let _: () = q(&mut c, &["SAVE"]).await;
    let _: String = q(&mut c, &["BGSAVE"]).await;
    let merged: Value = q(&mut c, &["MERGE"]).await;
    assert!(format!("{merged:?}").contains("reclaimed_bytes"));
    let _: String = q(&mut c, &["BGREWRITEAOF"]).await;
    let e = err(&mut c, &["NOSUCH", "x", "y"]).await;
    assert!(
        e.contains("unknown command 'NOSUCH'") && e.contains("'x' 'y'"),
        "{e}"
    );
    assert!(err(&mut c, &["GET"])
        .await
        .contains("wrong number of arguments for 'get'"));
    assert!(err(&mut c, &["HELLO", "4"]).await.contains("NOPROTO"));
    // The connection still works after errors.
    assert_eq!(q::<String>(&mut c, &["GET", "a"]).await, "1");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_gates_every_command_until_the_password_is_given() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = ringcask_server::Config {
        requirepass: Some("s3cret".into()),
        ..Default::default()
    };
    let srv = InProc::start(tmp.path(), config).await;
    let mut c = srv.client().await;
    assert!(err(&mut c, &["GET", "a"]).await.contains("NOAUTH"));
    assert!(err(&mut c, &["AUTH", "wrong"]).await.contains("WRONGPASS"));
    assert!(err(&mut c, &["AUTH", "bob", "s3cret"])
        .await
        .contains("WRONGPASS"));
    let _: () = q(&mut c, &["AUTH", "s3cret"]).await;
    let _: () = q(&mut c, &["SET", "a", "1"]).await;
    // HELLO with AUTH on a fresh connection.
    let mut d = srv.client().await;
    let _: Value = q(&mut d, &["HELLO", "2", "AUTH", "default", "s3cret"]).await;
    assert_eq!(q::<String>(&mut d, &["GET", "a"]).await, "1");
    // A URL with the password authenticates on connect.
    let url = format!("redis://:s3cret@{}/", srv.addr);
    let mut e = redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    assert_eq!(q::<String>(&mut e, &["GET", "a"]).await, "1");
    // Without a password configured, AUTH is an error.
    srv.stop().await;
    let tmp2 = tempfile::tempdir().expect("tmp");
    let open = InProc::default(tmp2.path()).await;
    let mut c = open.client().await;
    assert!(err(&mut c, &["AUTH", "x"])
        .await
        .contains("without any password"));
    open.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_from_many_clients_are_exact() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = InProc::default(tmp.path()).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = srv.client().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let _: i64 = q(&mut c, &["INCR", "n"]).await;
                let _: i64 = q(&mut c, &["APPEND", "s", "x"]).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut c = srv.client().await;
    assert_eq!(q::<i64>(&mut c, &["GET", "n"]).await, 400);
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "s"]).await, 400);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_is_answered_in_order_and_its_writes_share_syncs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = InProc::default(tmp.path()).await;
    let mut c = srv.client().await;
    let syncs_before = syncs(&mut c).await;
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
        pipe.cmd("GET").arg(format!("p{i}"));
    }
    let got: Vec<i64> = pipe.query_async(&mut c).await.expect("pipeline");
    assert_eq!(got, (0..200).collect::<Vec<i64>>());
    let used = syncs(&mut c).await - syncs_before;
    // One sync per batch of requests read together (a 200-write pipeline arrives in a few reads).
    assert!(
        (1..50).contains(&used),
        "{used} syncs for a pipeline of 200 writes"
    );
    srv.stop().await;
}

async fn syncs(c: &mut MultiplexedConnection) -> u64 {
    let info: String = q(c, &["INFO", "persistence"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("syncs:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("syncs in INFO")
}
