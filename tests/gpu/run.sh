#!/usr/bin/env bash
# On the GPU machine (the device tool runs it from the repository root, as root): joins
# the parts tests/gpu/bundle.sh made (copied to /tmp/up by earlier calls, or carried now
# in .gpu-up), sets up PostgreSQL 16 with akidb on ONNX Runtime's CUDA build, then runs
# bench/gpu/bench_gpu.py and the GPU tests (tests/gpu). Everything it writes goes to $OUT:
# gpu-<machine>.json/.png, tests.log, server logs.
#   STEPS="bench tests" (default both); PYTEST_ARGS="-k oom" narrows the tests.
set -u
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
log() { printf '==> %s\n' "$*"; }
mkdir -p /tmp/up
for d in "$ROOT"/.gpu-up/*/; do [ -d "$d" ] && cp -f "$d"/part.* /tmp/up/ 2>/dev/null; done
if [ ! -f /tmp/gpu/.joined ]; then
    log "joining $(ls /tmp/up | wc -l) parts"
    cat $(ls /tmp/up/part.* | sort -t. -k2 -n) | xz -d | tar -x -C /tmp || { echo "parts missing or broken"; exit 2; }
    touch /tmp/gpu/.joined
fi
if [ ! -d /tmp/site/psycopg ]; then
    rm -rf /tmp/site && cp -r /tmp/gpu/site /tmp/site   # the onnxruntime-gpu wheel, unpacked
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/gpu/whl/*.whl || exit 3
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# The CUDA libraries ONNX Runtime's CUDA provider needs (cuBLAS, cuDNN, cuFFT, cuRAND, the
# runtime) come with PyTorch's nvidia-* wheels; the driver's libcuda from the system.
site="$(python3 -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
cuda_libs="$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)"
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/libcuda.so.1" ] && cuda_libs="$cuda_libs:$d"
done
export AKIDB_CUDA_LIBS="$cuda_libs" LD_LIBRARY_PATH="$cuda_libs"
# PostgreSQL 16 with akidb: anew each call (a rebuilt akidb comes in .gpu-pg).
if [ -f "$ROOT/.gpu-pg/pg16.tar.gz" ]; then cp "$ROOT/.gpu-pg/pg16.tar.gz" /tmp/pg16.tar.gz; fi
pkill -u postgres postgres 2>/dev/null; sleep 1
rm -rf /tmp/pg16 && tar -xz -C /tmp -f /tmp/pg16.tar.gz || { echo "no PostgreSQL 16 bundle"; exit 4; }
lib="$(/tmp/pg16/bin/pg_config --pkglibdir)/akidb" models="$(/tmp/pg16/bin/pg_config --sharedir)/akidb/models"
mkdir -p "$lib" "$models/all-MiniLM-L6-v2" "$models/all-MiniLM-L6-v2-512"
cp /tmp/site/onnxruntime/capi/libonnxruntime*.so* "$lib/"
ln -sf libonnxruntime.so.1.31.1 "$lib/libonnxruntime.so"
cp /tmp/gpu/model/* "$ROOT/models/all-MiniLM-L6-v2/akidb.json" "$models/all-MiniLM-L6-v2/"
cp /tmp/gpu/model/* "$models/all-MiniLM-L6-v2-512/"
python3 - "$ROOT/models/all-MiniLM-L6-v2/akidb.json" "$models/all-MiniLM-L6-v2-512/akidb.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); m["max_tokens"] = 512
m["description"] = "all-MiniLM-L6-v2 with its full 512-token window (GPU benchmark)"
json.dump(m, open(sys.argv[2], "w"), indent=1)
PY
id postgres >/dev/null 2>&1 || useradd -M -d /tmp postgres
chmod -R a+rX /tmp/pg16 /tmp/site
ls "$(/tmp/pg16/bin/pg_config --pkglibdir)/akidb/"
export PGBIN=/tmp/pg16/bin AKIDB_RUN=/tmp/akidb-run
mkdir -p $AKIDB_RUN && chmod 755 $AKIDB_RUN
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$OUT/nvidia-smi.txt"
machine="${AKIDB_MACHINE:-h200}"
for step in ${STEPS:-bench tests}; do
    case "$step" in
    bench)
        log "bench/gpu/bench_gpu.py"
        d=$AKIDB_RUN/gpu-bench; rm -rf $d; mkdir -p $d; chown postgres: $d
        runuser -u postgres -- $PGBIN/initdb -D $d/data -A trust -U postgres >/dev/null
        runuser -u postgres -- env LD_LIBRARY_PATH="$cuda_libs" $PGBIN/pg_ctl -D $d/data -l $d/server.log -w start \
            -o "-p 55491 -k $d -c listen_addresses='' -c max_connections=60" >/dev/null
        PGHOST=$d PGPORT=55491 PGUSER=postgres PGDATABASE=postgres $PGBIN/psql -X -q -c "CREATE EXTENSION akidb"
        PGHOST=$d PGPORT=55491 PGUSER=postgres PGDATABASE=postgres AKIDB_MACHINE="$machine" \
            timeout "${BENCH_TIMEOUT:-300}" python3 "$ROOT/bench/gpu/bench_gpu.py" --model-dir /tmp/gpu/model \
            --out "$OUT/gpu-$machine" 2>&1 | tail -80
        runuser -u postgres -- $PGBIN/pg_ctl -D $d/data -m fast -w stop >/dev/null
        cp $d/server.log "$OUT/bench-server.log"
        ;;
    tests)
        log "pytest tests/gpu"
        timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -v -s -p no:cacheprovider "$ROOT/tests/gpu" ${PYTEST_ARGS:-} > "$OUT/tests.log" 2>&1
        echo "pytest exit $?"
        grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/tests.log" | tail -20
        cp $AKIDB_RUN/gpu/server.log "$OUT/tests-server.log" 2>/dev/null
        ;;
    esac
done
