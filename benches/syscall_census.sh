#!/usr/bin/env bash
# Syscall census: which system calls carry ringcask's appends, syncs and reads, per phase of
# examples/syscall_census.rs (2N durable puts from 8 tasks, N hot gets, N cold gets), in both
# io modes. Needs strace (apt-get install strace) and python3.
#
# usage: benches/syscall_census.sh [N (16000)] [VALUE (4096)]
# MODES="buffered direct" (default) picks the io modes; DIR the store's parent (/var/tmp);
# REAPER=tokio reaps the shared ring on the workload's runtime (Options::reap_on_tokio).
set -euo pipefail
n=${1:-16000}
value=${2:-4096}
cargo build --release --example syscall_census >/dev/null 2>&1
bin=target/release/examples/syscall_census
out=$(mktemp -d)
for mode in ${MODES:-buffered direct}; do
  strace -f -qq -o "$out/$mode.trace" "$bin" "$mode" "$n" "$value" 2>"$out/$mode.err"
  echo "## $mode ($n x 2 durable puts, $n hot gets, $n cold gets, $value B values)"
  grep '^stats' "$out/$mode.err" || true
  python3 - "$out/$mode.trace" <<'PY'
import collections, re, sys
phases = ["open", "durable puts", "hot gets", "cold gets", "close"]
counts = [collections.Counter() for _ in phases]
p = 0
call = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)")
for line in open(sys.argv[1]):
    m = call.match(line)
    if not m or "resumed>" in line:
        continue
    name = m.group(1)
    if name == "getppid":
        p = min(p + 1, len(phases) - 1)
        continue
    counts[p][name] += 1
io = ["pwrite64", "pwritev2", "pwritev", "write", "pread64", "preadv2", "preadv", "read",
      "fdatasync", "fsync", "io_uring_enter", "fallocate", "fadvise64", "futex"]
print("| phase | " + " | ".join(io) + " |")
print("|---" * (len(io) + 1) + "|")
for name, c in zip(phases, counts):
    print("| %s | %s |" % (name, " | ".join(str(c.get(s, 0)) for s in io)))
PY
  echo
done
rm -rf "$out"
