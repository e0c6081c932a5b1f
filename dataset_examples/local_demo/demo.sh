#!/usr/bin/env bash
# A real end-to-end download without internet: serve the bundled pictures on
# 127.0.0.1, build a URL list (with a caption column, one dead link and one
# non-image), download it into webdataset shards, then read the shards back.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$PWD/any2ds_demo_output}
work=$(mktemp -d)
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

python -m http.server "$port" --bind 127.0.0.1 --directory "$here" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do
  python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/demo.sh')" 2>/dev/null && break
  sleep 0.2
done

{
  echo "url,caption"
  for f in "$here"/images/*; do echo "http://127.0.0.1:$port/images/$(basename "$f"),a picture called $(basename "$f")"; done
  echo "http://127.0.0.1:$port/images/missing.jpg,a dead link"
  echo "http://127.0.0.1:$port/demo.sh,not an image"
} > "$work/urls.csv"

any2ds download --url_list "$work/urls.csv" --input_format csv --caption_col caption \
  --output_folder "$out" --output_format webdataset --incremental_mode overwrite \
  --image_size 128 --resize_mode keep_ratio --number_sample_per_shard 10 \
  --processes_count 2 --thread_count 8 \
  --allow_private_networks true  # the bundled source is on 127.0.0.1, which is blocked by default

python - "$out" <<'PY'
import glob, json, sys
import pyarrow.parquet as pq
import webdataset as wds

out = sys.argv[1]
tars = sorted(glob.glob(f"{out}/*.tar"))
samples = [s for s in wds.WebDataset(tars, shardshuffle=False)]
rows = pq.read_table(sorted(glob.glob(f"{out}/0*.parquet"))).to_pylist()
summary = json.load(open(f"{out}/_any2ds/run_summary.json"))
print(f"{len(tars)} tar shards, {len(samples)} images read back with webdataset, "
      f"{len(rows)} metadata rows, statuses: {summary['statuses']}")
assert len(rows) == 26 and len(samples) == 24, "expected 24 images and 26 rows"
PY
echo "demo output in $out"
