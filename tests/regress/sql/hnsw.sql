-- akidb_hnsw: behaviour on small, deterministic data (exact answers expected).
SET client_min_messages = warning;
CREATE TABLE items (id int PRIMARY KEY, category int, embedding vector(3));
INSERT INTO items
SELECT i, i % 100, ARRAY[sin(i), cos(i * 1.3), sin(i * 0.7)]::real[]::vector
FROM generate_series(1, 2000) i;
INSERT INTO items VALUES (0, 0, NULL);

CREATE INDEX items_l2 ON items USING akidb_hnsw (embedding vector_l2_ops);
SELECT * FROM akidb_hnsw_check('items_l2'::regclass);
SELECT elements, live, heap_tids FROM akidb_hnsw_info('items_l2'::regclass);

-- Used for ORDER BY col <op> constant LIMIT k ...
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY embedding <-> '[0.5,0.5,0.5]' LIMIT 5;
-- ... and not otherwise.
RESET enable_seqscan;
EXPLAIN (COSTS OFF) SELECT id FROM items WHERE embedding <-> '[0.5,0.5,0.5]' < 0.1;
EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY embedding <=> '[0.5,0.5,0.5]' LIMIT 5;
SET enable_seqscan = off;

-- The index answers what a sequential scan answers.
CREATE TEMP TABLE queries AS
SELECT q, ARRAY[cos(q * 2.1), sin(q), cos(q * 0.3)]::real[]::vector AS v FROM generate_series(1, 20) q;
CREATE FUNCTION top5(v vector) RETURNS int[] LANGUAGE sql AS
$$ SELECT array_agg(id) FROM (SELECT id FROM items ORDER BY embedding <-> v LIMIT 5) s $$;
CREATE TEMP TABLE by_index AS SELECT q, top5(v) AS ids FROM queries;
SET enable_indexscan = off; SET enable_seqscan = on;
SELECT count(*) AS queries_with_exact_top5 FROM queries JOIN by_index USING (q) WHERE top5(v) = ids;
RESET enable_indexscan; SET enable_seqscan = off;

-- Inserts after the build are found.
INSERT INTO items VALUES (5000, 1, '[9,9,9]'), (5001, 1, '[9,9,9.5]');
SELECT id FROM items ORDER BY embedding <-> '[9,9,9.1]' LIMIT 2;

-- Wrong dimensions and bad options are errors.
INSERT INTO items VALUES (6000, 1, '[1,2]');
SELECT id FROM items ORDER BY embedding <-> '[1,2]' LIMIT 1;
CREATE INDEX ON items USING akidb_hnsw (embedding vector_l2_ops) WITH (m = 1);
CREATE INDEX ON items USING akidb_hnsw (embedding vector_l2_ops) WITH (ef_construction = 1001);
CREATE TABLE nodims (v vector);
CREATE INDEX ON nodims USING akidb_hnsw (v vector_l2_ops);

-- Every operator class.
CREATE INDEX items_ip ON items USING akidb_hnsw (embedding vector_ip_ops) WITH (m = 8, ef_construction = 32);
CREATE INDEX items_cos ON items USING akidb_hnsw (embedding vector_cosine_ops);
CREATE INDEX items_l1 ON items USING akidb_hnsw (embedding vector_l1_ops);
SELECT id FROM items ORDER BY embedding <#> '[1,1,1]' LIMIT 3;
SELECT id FROM items ORDER BY embedding <=> '[9,9,9]' LIMIT 1;
SELECT id FROM items ORDER BY embedding <+> '[9,9,9.4]' LIMIT 1;

-- Filtered queries: iterative scans return k rows when k rows match (1% selective);
-- a plain scan returns only the matches among its ef_search candidates.
SELECT count(*) < 10 AS fewer_than_k FROM (SELECT id FROM items WHERE category = 7 ORDER BY embedding <-> '[0,0,0]' LIMIT 10) s;
SET akidb.hnsw_iterative_scan = relaxed_order;
SELECT count(*) FROM (SELECT id FROM items WHERE category = 7 ORDER BY embedding <-> '[0,0,0]' LIMIT 10) s;
SET akidb.hnsw_iterative_scan = strict_order;
SELECT count(*) FROM (SELECT id FROM items WHERE category = 7 ORDER BY embedding <-> '[0,0,0]' LIMIT 10) s;
SET akidb.hnsw_max_scan_tuples = 50;
-- (without the bound it finds all 10, as above: the 10th match is about the 1,000th row)
SELECT count(*) < 10 AS bounded FROM (SELECT id FROM items WHERE category = 7 ORDER BY embedding <-> '[0,0,0]' LIMIT 10) s;
RESET akidb.hnsw_max_scan_tuples; RESET akidb.hnsw_iterative_scan;
SET akidb.hnsw_iterative_scan = sideways;

-- DELETE + VACUUM: dead rows leave the graph, the index stays sound.
DELETE FROM items WHERE id % 5 = 0;
VACUUM items;
SELECT * FROM akidb_hnsw_check('items_l2'::regclass);
SELECT live, deleted > 0 AS has_deleted FROM akidb_hnsw_info('items_l2'::regclass);
SELECT count(*) FROM (SELECT id FROM items ORDER BY embedding <-> '[0,0,0]' LIMIT 10) s WHERE id % 5 = 0;
SELECT id FROM items ORDER BY embedding <-> '[9,9,9.1]' LIMIT 1;

-- NULLs and (for cosine) zero vectors are not indexed; empty tables work.
CREATE TABLE small (id int, v vector(2));
CREATE INDEX small_cos ON small USING akidb_hnsw (v vector_cosine_ops);
SELECT * FROM small ORDER BY v <=> '[1,1]' LIMIT 1;
INSERT INTO small VALUES (1, '[0,0]'), (2, NULL), (3, '[1,0]'), (4, '[0,1]');
SELECT elements FROM akidb_hnsw_info('small_cos'::regclass);
SELECT id FROM small ORDER BY v <=> '[1,0.1]' LIMIT 5;

-- Many identical vectors.
CREATE TABLE dups (id int, v vector(2));
INSERT INTO dups SELECT i, '[1,1]' FROM generate_series(1, 300) i;
INSERT INTO dups SELECT i, ARRAY[i, -i]::real[]::vector FROM generate_series(301, 400) i;
CREATE INDEX dups_idx ON dups USING akidb_hnsw (v vector_l2_ops);
SELECT count(*), min(v <-> '[1,1]') FROM (SELECT v FROM dups ORDER BY v <-> '[1,1]' LIMIT 10) s;
INSERT INTO dups SELECT i, '[1,1]' FROM generate_series(401, 450) i;
SELECT count(*), min(v <-> '[1,1]') FROM (SELECT v FROM dups ORDER BY v <-> '[1,1]' LIMIT 10) s;
SELECT * FROM akidb_hnsw_check('dups_idx'::regclass);
-- Any number of rows with one vector share one element (those beyond 10 in heap-tid
-- tuples), from the build or one by one, and every one of them is found.
INSERT INTO dups SELECT i, '[1,1]' FROM generate_series(1001, 1600) i;
SELECT elements, heap_tids FROM akidb_hnsw_info('dups_idx'::regclass);
SET akidb.hnsw_iterative_scan = relaxed_order;
SELECT count(*) FROM (SELECT id, v FROM dups ORDER BY v <-> '[1,1]' LIMIT 1000) s WHERE v = '[1,1]';
DELETE FROM dups WHERE id > 1100 AND id <= 1600;
VACUUM dups;
SELECT count(*) FROM (SELECT id, v FROM dups ORDER BY v <-> '[1,1]' LIMIT 1000) s WHERE v = '[1,1]';
RESET akidb.hnsw_iterative_scan;
DELETE FROM dups WHERE v = '[1,1]';
VACUUM dups;
SELECT elements, deleted, heap_tids FROM akidb_hnsw_info('dups_idx'::regclass);
SELECT * FROM akidb_hnsw_check('dups_idx'::regclass);

-- 4,096 dimensions (Qwen3-Embedding-8B), beyond pgvector's 2,000.
CREATE TABLE wide (id int, v vector(4096));
INSERT INTO wide SELECT i, (SELECT array_agg(sin(i * j))::real[] FROM generate_series(1, 4096) j)::vector FROM generate_series(1, 60) i;
CREATE INDEX wide_idx ON wide USING akidb_hnsw (v vector_cosine_ops);
INSERT INTO wide SELECT i, (SELECT array_agg(sin(i * j))::real[] FROM generate_series(1, 4096) j)::vector FROM generate_series(61, 80) i;
SELECT * FROM akidb_hnsw_check('wide_idx'::regclass);
SELECT id FROM wide ORDER BY v <=> (SELECT v FROM wide WHERE id = 70) LIMIT 1;
SELECT id FROM wide ORDER BY v <=> (SELECT v FROM wide WHERE id = 7) LIMIT 1;

-- Unlogged tables get unlogged indexes; partitioned tables; REINDEX.
CREATE UNLOGGED TABLE ul (id int, v vector(2));
CREATE INDEX ul_idx ON ul USING akidb_hnsw (v vector_l2_ops);
SELECT relpersistence FROM pg_class WHERE relname = 'ul_idx';
INSERT INTO ul SELECT i, ARRAY[i, i]::real[]::vector FROM generate_series(1, 100) i;
SELECT id FROM ul ORDER BY v <-> '[50.2,50.2]' LIMIT 1;
CREATE TABLE parted (id int, v vector(2)) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (100) TO (200);
CREATE INDEX ON parted USING akidb_hnsw (v vector_l2_ops);
INSERT INTO parted SELECT i, ARRAY[i, i]::real[]::vector FROM generate_series(0, 199) i;
SELECT id FROM parted ORDER BY v <-> '[150.2,150.2]' LIMIT 2;
REINDEX INDEX items_l2;
REINDEX INDEX CONCURRENTLY items_cos;
SELECT * FROM akidb_hnsw_check('items_l2'::regclass);
SELECT id FROM items ORDER BY embedding <-> '[9,9,9.1]' LIMIT 1;
DROP TABLE items, small, dups, wide, ul, parted, nodims;
