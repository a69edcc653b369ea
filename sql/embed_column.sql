-- Bulk embedding of an existing table: CALL akidb_embed_column('docs', 'body', 'embedding').
--
-- Fills `target` (vector(n)) from `source` (text) for every row whose target is NULL
-- and whose source is not, batch_size rows at a time through embed(text[]), committing
-- after each batch. It is restartable (a second call only sees the rows still NULL),
-- several sessions can run it on one table at once (rows are taken FOR UPDATE SKIP
-- LOCKED), and a cancel or an error loses only the batch in flight. Progress is in
-- akidb.embedding_progress, readable from any session, and in a NOTICE at most once a
-- second (SET client_min_messages = warning hides it).
--
-- A partitioned table is filled partition by partition. It is a procedure because it commits: CALL it outside a transaction block. It runs
-- with the caller's rights; only its progress row is written with the extension's.

-- One row per (table, target column): the last or the running fill of that column.
CREATE TABLE akidb.embedding_jobs (
    relation   regclass    NOT NULL,
    target     name        NOT NULL,
    source     name        NOT NULL,
    model      text        NOT NULL,
    pid        integer     NOT NULL,
    state      text        NOT NULL CHECK (state IN ('running', 'done')),
    rows_total bigint      NOT NULL,
    rows_done  bigint      NOT NULL,
    started    timestamptz NOT NULL,
    updated    timestamptz NOT NULL,
    PRIMARY KEY (relation, target)
);
REVOKE ALL ON akidb.embedding_jobs FROM PUBLIC;

-- Writes a job's row; the caller must be allowed to update the target column.
CREATE FUNCTION akidb.report_embedding_job(
    relation regclass, target name, source name, model text, state text,
    rows_total bigint, rows_done bigint, started timestamptz
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT has_column_privilege(relation, target, 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied for column % of %', target, relation
            USING ERRCODE = '42501';
    END IF;
    INSERT INTO akidb.embedding_jobs AS j
        VALUES (relation, target, source, model, pg_backend_pid(), state, rows_total, rows_done, started, clock_timestamp())
    ON CONFLICT ON CONSTRAINT embedding_jobs_pkey DO UPDATE
        SET source = EXCLUDED.source, model = EXCLUDED.model, pid = EXCLUDED.pid, state = EXCLUDED.state,
            rows_total = EXCLUDED.rows_total, rows_done = EXCLUDED.rows_done,
            started = EXCLUDED.started, updated = EXCLUDED.updated;
END $$;
REVOKE ALL ON FUNCTION akidb.report_embedding_job FROM PUBLIC;

-- What another session watches: rows done, rate, time left. A job whose backend is gone
-- (canceled, terminated, crashed) shows as 'stopped'; calling the procedure again resumes it.
CREATE VIEW akidb.embedding_progress AS
SELECT j.relation, j.source, j.target, j.model, j.pid,
       CASE WHEN j.state = 'running' AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_stat_activity a
                WHERE a.pid = j.pid AND a.backend_start <= j.started AND a.state = 'active')
            THEN 'stopped' ELSE j.state END AS state,
       j.rows_done, j.rows_total,
       round(100.0 * j.rows_done / greatest(j.rows_total, 1), 1) AS percent,
       round((j.rows_done / greatest(extract(epoch FROM j.updated - j.started), 0.001))::numeric, 1) AS rows_per_second,
       CASE WHEN j.rows_done > 0 AND j.state = 'running'
            THEN (j.updated - j.started) * ((j.rows_total - j.rows_done)::float8 / j.rows_done) END AS time_left,
       j.started, j.updated
FROM akidb.embedding_jobs j
WHERE has_table_privilege(j.relation, 'SELECT');
GRANT USAGE ON SCHEMA akidb TO PUBLIC;
GRANT SELECT ON akidb.embedding_progress TO PUBLIC;
GRANT SELECT ON akidb.models TO PUBLIC;

CREATE PROCEDURE akidb_embed_column(
    relation regclass, source name, target name,
    model text DEFAULT '', batch_size integer DEFAULT 256, dims integer DEFAULT 0
) LANGUAGE plpgsql AS $$
DECLARE
    src_type  regtype;
    tgt_type  regtype;
    tgt_dims  integer;
    want_dims integer;
    total     bigint;
    done      bigint := 0;
    started   timestamptz := clock_timestamp();
    noticed   timestamptz := clock_timestamp();
    ids       tid[];
    texts     text[];
    vecs      @extschema@.vector[];
    elapsed   float8;
    pick      text;
    fill      text;
    model_name text;
    leaves    regclass[];
    leaf      regclass;
    part      bigint;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 100000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 100000, not %', batch_size
            USING ERRCODE = '22023';
    END IF;
    IF relation IS NULL OR source IS NULL OR target IS NULL THEN
        RAISE EXCEPTION 'relation, source and target must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT a.atttypid INTO src_type FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = relation AND a.attname = source AND a.attnum > 0 AND NOT a.attisdropped;
    IF src_type IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', source, relation USING ERRCODE = '42703';
    END IF;
    IF (SELECT t.typcategory FROM pg_catalog.pg_type t WHERE t.oid = src_type) <> 'S' THEN
        RAISE EXCEPTION 'source column "%" is of type %, not text', source, src_type
            USING ERRCODE = '42804', HINT = 'The source must be text, varchar or char; cast other types in a generated column first.';
    END IF;
    SELECT a.atttypid, a.atttypmod INTO tgt_type, tgt_dims FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = relation AND a.attname = target AND a.attnum > 0 AND NOT a.attisdropped;
    IF tgt_type IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', target, relation USING ERRCODE = '42703';
    END IF;
    IF tgt_type <> '@extschema@.vector'::regtype THEN
        RAISE EXCEPTION 'target column "%" is of type %, not vector', target, tgt_type USING ERRCODE = '42804';
    END IF;
    IF NOT has_column_privilege(relation, source, 'SELECT') OR NOT has_column_privilege(relation, target, 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied: akidb_embed_column needs SELECT on "%" and UPDATE on "%" of %',
            source, target, relation USING ERRCODE = '42501';
    END IF;
    -- Loads the model (an unknown or broken model fails here) and gives its output size.
    want_dims := @extschema@.akidb_model_dims(model, dims);
    IF tgt_dims IS DISTINCT FROM want_dims THEN
        RAISE EXCEPTION 'target column "%" is %, but model "%" gives % dimensions',
            target, CASE WHEN tgt_dims > 0 THEN format('vector(%s)', tgt_dims) ELSE 'vector' END,
            @extschema@.akidb_resolve_model(model), want_dims
            USING ERRCODE = '22000', HINT = format('Declare the column as vector(%s).', want_dims);
    END IF;

    model_name := @extschema@.akidb_resolve_model(model);
    -- Rows are picked and updated by ctid, which is unique only within one table: a
    -- partitioned table is done leaf partition by leaf partition (ONLY each).
    IF (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = relation) = 'p' THEN
        leaves := ARRAY(SELECT p.relid FROM pg_catalog.pg_partition_tree(relation) p
                        WHERE p.isleaf ORDER BY p.level, p.relid::oid);
    ELSE
        leaves := ARRAY[relation];
    END IF;
    total := 0;
    FOREACH leaf IN ARRAY leaves LOOP
        EXECUTE format('SELECT count(*) FROM ONLY %3$s WHERE %2$I IS NULL AND %1$I IS NOT NULL', source, target, leaf)
            INTO part;
        total := total + part;
    END LOOP;
    PERFORM akidb.report_embedding_job(relation, target, source, model_name, 'running', total, 0, started);
    COMMIT;
    FOREACH leaf IN ARRAY leaves LOOP
        pick := format('SELECT array_agg(ctid), array_agg(%1$I::text) FROM (SELECT ctid, %1$I FROM ONLY %3$s
                        WHERE %2$I IS NULL AND %1$I IS NOT NULL LIMIT $1 FOR UPDATE SKIP LOCKED) s',
                       source, target, leaf);
        fill := format('UPDATE ONLY %1$s SET %2$I = $2[array_position($1, ctid)] WHERE ctid = ANY ($1)', leaf, target);
        LOOP
            EXECUTE pick INTO ids, texts USING batch_size;
            EXIT WHEN ids IS NULL;
            vecs := @extschema@.embed(texts, model, dims);
            EXECUTE fill USING ids, vecs;
            done := done + cardinality(ids);
            PERFORM akidb.report_embedding_job(relation, target, source, model_name, 'running',
                                               greatest(total, done), done, started);
            COMMIT;
            IF clock_timestamp() - noticed >= interval '1 second' THEN
                noticed := clock_timestamp();
                elapsed := extract(epoch FROM noticed - started);
                RAISE NOTICE 'akidb_embed_column: % of % rows (% %%), % rows/s, about % s left',
                    done, greatest(total, done), round(100.0 * done / greatest(total, done, 1), 1),
                    round((done / elapsed)::numeric, 1),
                    round((elapsed * greatest(total - done, 0) / done)::numeric);
            END IF;
        END LOOP;
    END LOOP;
    PERFORM akidb.report_embedding_job(relation, target, source, model_name, 'done', greatest(total, done), done, started);
    COMMIT;
    elapsed := greatest(extract(epoch FROM clock_timestamp() - started), 0.001);
    RAISE NOTICE 'akidb_embed_column: % rows embedded in % s (% rows/s)',
        done, round(elapsed::numeric, 1), round((done / elapsed)::numeric, 1);
END $$;
COMMENT ON PROCEDURE akidb_embed_column IS
    'Fills a vector column from a text column in committed batches through embed(text[]); restartable; progress in akidb.embedding_progress';
