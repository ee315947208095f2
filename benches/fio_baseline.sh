#!/usr/bin/env bash
# fio baselines for the device-level figures of `io_bench` (harness/src/bin/io_bench.rs), on
# the same disk:
#   - random 4 KiB reads, O_DIRECT through io_uring, at iodepth 1, 8, 32, 128 (the ceiling
#     `io_bench cold` is compared with);
#   - sequential 4 KiB writes with an fdatasync every C writes, into fallocated space and over
#     blocks written before (the floors `io_bench durable` is compared with);
#   - the floors of a direct-IO group commit: C records as one O_DIRECT write through io_uring,
#     made durable by an fdatasync after it or by O_DSYNC (FUA) on the write, beside the same
#     write buffered + fdatasync.
#
# usage: benches/fio_baseline.sh [DIR (default: a temp dir)] [SIZE (default 2g)] [SECS (default 4)]
# TESTS="read sync direct" (the default) picks the tables; CONC="1 8 32 128" the concurrencies.
# Needs fio (apt-get install fio) and python3. Prints one markdown table per test.
#
# READ_FILES="store/*.data": read those files (e.g. the store `io_bench cold --dir` built)
# instead of a file laid out just before. On a virtual machine the host caches what the guest
# wrote or read lately: a freshly laid-out file read back at once measured 150k IOPS at
# iodepth 32 here, the store's own files 28k. Compare like with like: fio on the store's files,
# run next to io_bench (which reads keys in a fresh order every run).
set -euo pipefail
dir=${1:-$(mktemp -d)}
size=${2:-2g}
secs=${3:-4}
conc=${CONC:-1 8 32 128}
# TESTS picks the tables: read, sync, direct (all by default).
tests=" ${TESTS:-read sync direct} "
mkdir -p "$dir"
file="$dir/fio.dat"

summary() {
  # iops, p50 and p99 completion latency (µs) of the read or write side of fio's JSON.
  python3 -c '
import json, sys
side = sys.argv[1]
j = json.load(sys.stdin)["jobs"][0][side]
pct = j["clat_ns"].get("percentile", {})
p = lambda q: pct.get(q, 0) / 1e3
print("%.0f | %.0f | %.0f" % (j["iops"], p("50.000000"), p("99.000000")))' "$1"
}

if [[ $tests == *" read "* ]]; then
if [ -n "${READ_FILES:-}" ]; then
  # fio separates file names with ':'.
  target=$(printf '%s:' $READ_FILES | sed 's/:$//')
  sizearg=()
  echo "reading the given files: $(printf '%s\n' $READ_FILES | wc -l)"
else
  echo "laying out $file ($size)"
  fio --name=layout --filename="$file" --size="$size" --rw=write --bs=1m --direct=1 \
    --ioengine=psync --output-format=json >/dev/null
  target=$file
  sizearg=(--size="$size")
fi

echo
echo "random 4 KiB reads, O_DIRECT, io_uring ($secs s each)"
echo "| iodepth | IOPS | p50 µs | p99 µs |"
echo "|---|---|---|---|"
for c in $conc; do
  row=$(fio --name=randread --filename="$target" "${sizearg[@]}" --rw=randread --bs=4k \
    --direct=1 --ioengine=io_uring --iodepth="$c" --runtime="$secs" --time_based \
    --randrepeat=0 --readonly --output-format=json | summary read)
  echo "| $c | $row |"
done
if [ -z "${READ_FILES:-}" ]; then rm -f "$file"; fi

fi

if [[ $tests == *" sync "* ]]; then
echo
echo "4 KiB writes + fdatasync every C writes ($secs s each): into fallocated space / over written blocks"
echo "| C | alloc writes/s | overwrite writes/s |"
echo "|---|---|---|"
for c in $conc; do
  alloc=$(fio --name=alloc --filename="$dir/sync.dat" --size=2g --rw=write --bs=4k \
    --ioengine=psync --fdatasync="$c" --fallocate=native --runtime="$secs" --time_based \
    --output-format=json | summary write | cut -d' ' -f1)
  rm -f "$dir/sync.dat"
  over=$(fio --name=over --filename="$dir/sync.dat" --size=2g --rw=write --bs=4k \
    --ioengine=psync --fdatasync="$c" --overwrite=1 --runtime="$secs" --time_based \
    --output-format=json | summary write | cut -d' ' -f1)
  rm -f "$dir/sync.dat"
  echo "| $c | $alloc | $over |"
done

fi

if [[ $tests == *" direct "* ]]; then
echo
echo "direct-IO group commit floors ($secs s each): C records of 4 KiB written as one O_DIRECT write"
echo "of C x 4 KiB over written blocks, through io_uring, made durable by an fdatasync after each"
echo "write, or by O_DSYNC on the write itself (a FUA write where the device honours it)"
echo "| C | direct + fdatasync records/s | direct O_DSYNC records/s | buffered + fdatasync records/s |"
echo "|---|---|---|---|"
for c in $conc; do
  bs=$((4 * c))k
  # Laid out first, so that every write below is an overwrite.
  fio --name=layout --filename="$dir/direct.dat" --size=1g --rw=write --bs=1m --direct=1 \
    --ioengine=psync --output-format=json >/dev/null
  d_sync=$(fio --name=dsync --filename="$dir/direct.dat" --size=1g --rw=write --bs="$bs" \
    --direct=1 --ioengine=io_uring --iodepth=1 --fdatasync=1 --runtime="$secs" --time_based \
    --output-format=json | summary write | cut -d' ' -f1)
  d_fua=$(fio --name=fua --filename="$dir/direct.dat" --size=1g --rw=write --bs="$bs" \
    --direct=1 --sync=dsync --ioengine=io_uring --iodepth=1 --runtime="$secs" --time_based \
    --output-format=json | summary write | cut -d' ' -f1)
  b_sync=$(fio --name=bsync --filename="$dir/direct.dat" --size=1g --rw=write --bs="$bs" \
    --ioengine=psync --fdatasync=1 --runtime="$secs" --time_based \
    --output-format=json | summary write | cut -d' ' -f1)
  rm -f "$dir/direct.dat"
  echo "| $c | $((d_sync * c)) | $((d_fua * c)) | $((b_sync * c)) |"
done
fi
