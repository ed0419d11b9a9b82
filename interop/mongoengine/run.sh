#!/usr/bin/env bash
# MongoEngine's own test suite against the embedded server (SecantusDB), alone and with
# `modelstream serve` watching its database, in `collection` and in `inline` mode.
#
#   interop/mongoengine/run.sh [PYTEST_PATHS...]      (default: tests, the whole suite)
#
# MongoEngine's test sources are not kept in this repository: the script takes them from a git
# copy of github.com/MongoEngine/mongoengine (MONGOENGINE_GIT: a clone's .git or a bare mirror), at
# tag v0.29.3 (commit 30f6d56c5c0777f084213faf6b6e923acea225f7, MIT licence), matching the
# `mongoengine==0.29.3` installed from PyPI into a scratch venv. MongoEngine's tests connect to
# localhost:27017, database `mongoenginetest`: the server is started there (the port must be free).
# Env: WORK (scratch folder, default /tmp/modelstream-mongoengine), MODELSTREAM_PYTHON (the
# python that has modelstream and SecantusDB, default the repository's .venv), RUNS (default
# "alone alone2 collection inline"; alone2 repeats the baseline to show flaky tests).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${MODELSTREAM_PYTHON:-$ROOT/.venv/bin/python}"
WORK="${WORK:-/tmp/modelstream-mongoengine}"
RUNS="${RUNS:-alone alone2 collection inline}"
PORT=27017
TESTS=("$@"); [ ${#TESTS[@]} -eq 0 ] && TESTS=(tests)
mkdir -p "$WORK"
MONGOENGINE_COMMIT=30f6d56c5c0777f084213faf6b6e923acea225f7
: "${MONGOENGINE_GIT:?set MONGOENGINE_GIT to a git dir of github.com/MongoEngine/mongoengine (git clone it)}"
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
git --git-dir="$MONGOENGINE_GIT" archive "$MONGOENGINE_COMMIT" tests setup.cfg | tar -x -C "$WORK/src"

if [ ! -x "$WORK/venv/bin/python" ]; then
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install --quiet "mongoengine==0.29.3" pytest blinker "Pillow>=7.0.0"
fi
"$WORK/venv/bin/python" -c "import mongoengine, pymongo; print('mongoengine', mongoengine.__version__, 'pymongo', pymongo.version)"

SERVER_PID=""; SERVE_PID=""
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  SERVE_PID=""; SERVER_PID=""
}
trap cleanup EXIT

start_server() {  # a fresh, empty server for every run
  rm -rf "$WORK/$1/db"; mkdir -p "$WORK/$1/db"
  "$PY" -m secantus --host 127.0.0.1 --port $PORT --storage-path "$WORK/$1/db" --log-level WARNING \
    > "$WORK/$1/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    "$PY" -c "import pymongo; pymongo.MongoClient('mongodb://127.0.0.1:$PORT/?directConnection=true', serverSelectionTimeoutMS=300).admin.command('ping')" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "server did not start: $WORK/$1/server.log" >&2; exit 1
}

start_daemon() {  # $1 run name, $2 store
  cat > "$WORK/$1/registry.yaml" <<YAML
database: {uri: "mongodb://127.0.0.1:$PORT/?directConnection=true", name: mongoenginetest}
api: {listen: null, unix: "$WORK/$1/api.sock"}
data_dir: "$WORK/$1/ms"
outputs: {store: $2$( [ "$2" = collection ] && echo ", database: modelstream_own" )}
models:
  person_name: {object: "models:letters", collection: person, key: name}
  person_doubled: {object: "models:letters", collection: person, key: name, features: {name: person_name}}
  post_title: {object: "models:letters", collection: blog_post, key: title}
  user_name: {object: "models:letters", collection: user, key: name}
  animal_name: {object: "models:letters", collection: animal, key: name}
indexes:
  person: {models: [person_name], measure: cosine}
YAML
  PYTHONPATH="$HERE" "$PY" -m modelstream serve -c "$WORK/$1/registry.yaml" --json-logs \
    > /dev/null 2> "$WORK/$1/serve.log" &
  SERVE_PID=$!
  for _ in $(seq 300); do
    "$PY" -m modelstream status --socket "$WORK/$1/api.sock" > /dev/null 2>&1 && return 0
    kill -0 "$SERVE_PID" 2>/dev/null || { echo "serve exited: $WORK/$1/serve.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "serve did not answer: $WORK/$1/serve.log" >&2; exit 1
}

for run in $RUNS; do
  mkdir -p "$WORK/$run"
  start_server "$run"
  case "$run" in collection|inline) start_daemon "$run" "$run" ;; esac
  echo "== $run: pytest ${TESTS[*]}"
  started=$(date +%s)
  (cd "$WORK/src" && timeout 1200 "$WORK/venv/bin/python" -m pytest "${TESTS[@]}" -p no:cacheprovider -q \
     --junitxml="$WORK/$run.xml" > "$WORK/$run.pytest.log" 2>&1) || true
  echo "   $(tail -1 "$WORK/$run.pytest.log")  ($(( $(date +%s) - started ))s)"
  if [ -n "$SERVE_PID" ]; then
    "$PY" -m modelstream status --socket "$WORK/$run/api.sock" --json > "$WORK/$run/status.json" 2>&1 \
      && "$PY" - "$WORK/$run/status.json" <<'PYEOF' || echo "   daemon did not answer status after the suite" >&2
import json, sys
s = json.load(open(sys.argv[1]))
models = {k: (v["done"], v["failed"]) for k, v in s["models"].items()}
print(f"   daemon after the suite: phase {s['phase']}, connection {s['connection']}, events {s['events']}, "
      f"retries {s.get('retries')}, (done, failed) per model {models}")
PYEOF
    kill -TERM "$SERVE_PID"; wait "$SERVE_PID" || echo "   serve exited $?"; SERVE_PID=""
    echo "   daemon log: $(grep -c '"level": "error"' "$WORK/$run/serve.log" || true) error lines, $(grep -c '"level": "warning"' "$WORK/$run/serve.log" || true) warnings ($WORK/$run/serve.log)"
  fi
  cleanup
done

"$PY" "$HERE/compare.py" $(for run in $RUNS; do echo "$WORK/$run.xml"; done) | tee "$WORK/compare.txt"
