-- avg(vector) and sum(vector), serial and parallel.

SELECT avg(v), sum(v) FROM (VALUES ('[1,2]'::vector), ('[3,5]'), (NULL)) t(v);
SELECT avg(v), sum(v) FROM (SELECT NULL::vector v WHERE false) t;
SELECT err($$SELECT avg(v) FROM (VALUES ('[1,2]'::vector), ('[3,5,6]')) t(v)$$);
SELECT err($$SELECT sum(v) FROM (VALUES ('[1,2]'::vector), ('[3,5,6]')) t(v)$$);
SELECT err($$SELECT sum(v) FROM (VALUES ('[3e38]'::vector), ('[3e38]')) t(v)$$);

-- the parallel path (partial aggregates combined) gives the serial answer
CREATE TABLE agg_t AS SELECT ARRAY[i % 10, i % 3, 1]::real[]::vector(3) AS v FROM generate_series(1, 30000) i;
ANALYZE agg_t;
SELECT avg(v), sum(v), count(*) FROM agg_t;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT avg(v), sum(v) FROM agg_t;
SELECT avg(v), sum(v), count(*) FROM agg_t;
RESET ALL;
DROP TABLE agg_t;
