//! Compare harness: the same workloads on ringcask, the `raw` floor and peer engines, each engine
//! in its own process (so that peak RSS is its own), side by side in one run.
//!
//! ```text
//! cargo run --release -p ringcask-bench --features peers -- --engines all
//! cargo run --release -p ringcask-bench -- --engines ringcask,raw --n 200000 --values 100
//! ```
//!
//! Options: `--engines all|a,b,c` (default all built in), `--n N` keys (default 1,000,000; the
//! 4 KiB-value runs use N/8), `--values 100,4096`, `--ops M` ops per read workload (default
//! min(N, 1,000,000)), `--out DIR` (default `harness/results`). Writes `<out>/compare.md` and
//! `<out>/compare.svg`.

mod engines;
mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use workloads::{Outcome, Params};

struct Args {
    engines: Vec<String>,
    n: u64,
    values: Vec<usize>,
    ops: Option<u64>,
    out: PathBuf,
    child: Option<(String, PathBuf)>,
    repeat: usize,
}

const USAGE: &str = "usage: ringcask-bench [--engines all|ringcask,raw,redb,fjall,sled,rocksdb] \
[--n KEYS (default 1000000)] [--values 100,4096] [--ops OPS_PER_READ_WORKLOAD] [--out DIR] \
[--repeat R (default 1: each cell is the median of R runs, engines interleaved)]
peers are compiled in with cargo features: --features peers (redb, fjall, sled), rocksdb";

/// `v` parsed as a number, or a usage error naming `flag`.
fn number<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse().unwrap_or_else(|_| {
        eprintln!("{flag} needs a number, got {v:?}\n\n{USAGE}");
        std::process::exit(2)
    })
}

fn parse_args() -> Args {
    let mut a = Args {
        engines: engines::available().iter().map(|s| s.to_string()).collect(),
        n: 1_000_000,
        values: vec![100, 4096],
        ops: None,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
        child: None,
        repeat: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--engines" => {
                let v = val();
                if v != "all" {
                    a.engines = v.split(',').map(str::to_string).collect();
                }
            }
            "--n" => a.n = number(&flag, &val()),
            "--repeat" => a.repeat = number::<usize>(&flag, &val()).max(1),
            "--values" => a.values = val().split(',').map(|s| number(&flag, s)).collect(),
            "--ops" => a.ops = Some(number(&flag, &val())),
            "--out" => a.out = PathBuf::from(val()),
            "--child" => {
                let engine = val();
                let dir = PathBuf::from(val());
                a.child = Some((engine, dir));
            }
            "--bench" => {} // passed by `cargo bench`
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    a
}

fn main() {
    let args = parse_args();
    if let Some((engine, dir)) = &args.child {
        // Child: one engine, one value size (`--values` has exactly one entry).
        let p = Params {
            n: args.n,
            value_len: args.values[0],
            ops: args.ops.unwrap_or(args.n.min(1_000_000)),
        };
        for o in workloads::run_all(engine, dir, &p) {
            println!("{}", o.to_line());
        }
        return;
    }
    std::fs::create_dir_all(&args.out).expect("out dir");
    let machine = machine_line();
    let mut tables = String::new();
    let mut chart_groups: Vec<(String, BTreeMap<String, f64>)> = Vec::new();
    for &value_len in &args.values {
        let n = if value_len > 1024 { args.n / 8 } else { args.n };
        let ops = args.ops.unwrap_or(n.min(1_000_000));
        // runs[workload][engine]: one outcome per repetition.
        let mut runs: BTreeMap<String, BTreeMap<String, Vec<Outcome>>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        // Repetitions go round the engines, so that a noisy minute hits all of them alike.
        for round in 0..args.repeat {
            for engine in &args.engines {
                eprintln!(
                    "== {engine}: n={n}, values {value_len} B (run {} of {})",
                    round + 1,
                    args.repeat
                );
                let tmp = tempfile::tempdir().expect("tmp");
                let out = Command::new(std::env::current_exe().expect("exe"))
                    .args(["--child", engine])
                    .arg(tmp.path())
                    .args(["--n", &n.to_string(), "--values", &value_len.to_string()])
                    .args(["--ops", &ops.to_string()])
                    .output()
                    .expect("spawn engine process");
                if !out.status.success() {
                    eprintln!(
                        "engine {engine} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    continue;
                }
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    if let Some(o) = Outcome::from_line(line) {
                        eprintln!("  {line}");
                        if !order.contains(&o.workload) {
                            order.push(o.workload.clone());
                        }
                        runs.entry(o.workload.clone())
                            .or_default()
                            .entry(engine.clone())
                            .or_default()
                            .push(o);
                    }
                }
            }
        }
        // results[workload][engine]: the median run of each cell (by its value).
        let results: BTreeMap<String, BTreeMap<String, Outcome>> = runs
            .into_iter()
            .map(|(w, by_engine)| {
                let row = by_engine
                    .into_iter()
                    .map(|(e, mut v)| {
                        v.sort_by(|a, b| a.value.total_cmp(&b.value));
                        let mid = v.swap_remove(v.len() / 2);
                        (e, mid)
                    })
                    .collect();
                (w, row)
            })
            .collect();
        tables.push_str(&markdown(&args.engines, &order, &results, n, value_len));
        for w in &order {
            let Some(row) = results.get(w) else { continue };
            let Some(first) = row.values().next() else {
                continue;
            };
            if first.unit != "ops/s" {
                continue;
            }
            let vals = row.iter().map(|(e, o)| (e.clone(), o.value)).collect();
            chart_groups.push((format!("{w} ({value_len} B)"), vals));
        }
    }
    let repeats = if args.repeat > 1 {
        format!(
            "Each cell is the median of {} runs (the engines took turns, run after run; \
             its p50/p99 are that run's). ",
            args.repeat
        )
    } else {
        String::new()
    };
    let (cache, direct_cache) = (engines::cache_mib(), engines::direct_cache_mib());
    let doc = format!(
        "# ringcask compare harness\n\n{machine}\n\nEach engine ran in its own process; \
         ratios compare engines within this one run. {repeats} `vs best peer` is ringcask (or \
         ringcask-cache: the same with a {cache} MiB value cache; ringcask-direct: \
         `IoMode::Direct`, a {direct_cache} MiB value cache and, when durable, the direct-IO \
         writer) divided by the best of \
         the other engines (`raw` excluded); for seconds, bytes and RSS lower is better \
         and the ratio is best peer / ringcask (above 1 means ringcask is better).\n\n{tables}"
    );
    let md = args.out.join("compare.md");
    std::fs::write(&md, &doc).expect("write markdown");
    let svg = args.out.join("compare.svg");
    std::fs::write(&svg, chart(&args.engines, &chart_groups)).expect("write svg");
    println!("{doc}");
    eprintln!("wrote {} and {}", md.display(), svg.display());
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "Machine: {cpus} CPUs ({model}), Linux {}, date {date}.",
        kernel.trim()
    )
}

fn markdown(
    engines: &[String],
    order: &[String],
    results: &BTreeMap<String, BTreeMap<String, Outcome>>,
    n: u64,
    value_len: usize,
) -> String {
    let mut s = format!("## N = {n} keys of 16 B, values {value_len} B\n\n| workload | unit |");
    for e in engines {
        s.push_str(&format!(" {e} |"));
    }
    // One ratio column per ringcask configuration in the run.
    let ours: Vec<&String> = engines
        .iter()
        .filter(|e| e.starts_with("ringcask"))
        .collect();
    for o in &ours {
        s.push_str(&format!(" {o} vs best peer |"));
    }
    s.push_str("\n|---|---|");
    for _ in engines.iter().chain(ours.iter().copied()) {
        s.push_str("---:|");
    }
    s.push('\n');
    for w in order {
        let Some(row) = results.get(w) else { continue };
        let unit = row
            .values()
            .next()
            .map(|o| o.unit.clone())
            .unwrap_or_default();
        s.push_str(&format!("| {w} | {unit} |"));
        for e in engines {
            match row.get(e) {
                Some(o) if o.p99_us > 0.0 => s.push_str(&format!(
                    " {} (p50 {:.0} µs, p99 {:.0} µs) |",
                    fmt_num(o.value),
                    o.p50_us,
                    o.p99_us
                )),
                Some(o) => s.push_str(&format!(" {} |", fmt_num(o.value))),
                None => s.push_str(" – |"),
            }
        }
        let higher_better = unit == "ops/s";
        let best_peer = row
            .iter()
            .filter(|(e, _)| !e.starts_with("ringcask") && *e != "raw")
            .map(|(_, o)| o.value)
            .fold(None, |acc: Option<f64>, v| {
                Some(match acc {
                    None => v,
                    Some(a) if higher_better => a.max(v),
                    Some(a) => a.min(v),
                })
            });
        for o in &ours {
            let ratio = match (row.get(o.as_str()), best_peer) {
                (Some(r), Some(b)) if r.value > 0.0 && b > 0.0 => {
                    if higher_better {
                        format!("{:.2}x", r.value / b)
                    } else {
                        format!("{:.2}x", b / r.value)
                    }
                }
                _ => "–".into(),
            };
            s.push_str(&format!(" {ratio} |"));
        }
        s.push('\n');
    }
    s.push('\n');
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A horizontal grouped bar chart: per workload, each engine's ops/s relative to the best.
fn chart(engines: &[String], groups: &[(String, BTreeMap<String, f64>)]) -> String {
    const COLORS: [&str; 6] = [
        "#d62728", "#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd",
    ];
    let bar_h = 12.0;
    let group_h = bar_h * engines.len() as f64 + 14.0;
    let left = 260.0;
    let width = 900.0;
    let plot_w = width - left - 120.0;
    let height = 60.0 + group_h * groups.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">ops/s relative to the best \
         engine of each workload (longer is better)</text>\n"
    );
    for (i, e) in engines.iter().enumerate() {
        let x = 10.0 + 110.0 * i as f64;
        s.push_str(&format!(
            "<rect x=\"{x}\" y=\"30\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" \
             y=\"39\">{e}</text>\n",
            COLORS[i % COLORS.len()],
            x + 14.0
        ));
    }
    for (g, (name, vals)) in groups.iter().enumerate() {
        let y0 = 50.0 + group_h * g as f64;
        let best = vals.values().cloned().fold(0.0, f64::max).max(1e-9);
        s.push_str(&format!(
            "<text x=\"10\" y=\"{}\">{}</text>\n",
            y0 + group_h / 2.0,
            xml(name)
        ));
        for (i, e) in engines.iter().enumerate() {
            let Some(v) = vals.get(e) else { continue };
            let w = plot_w * v / best;
            let y = y0 + bar_h * i as f64;
            s.push_str(&format!(
                "<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                bar_h - 2.0,
                COLORS[i % COLORS.len()],
                left + w + 4.0,
                y + bar_h - 3.0,
                fmt_num(*v)
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
