-- Storage: large vectors out of line (TOAST), binary COPY round trip, send/recv.

CREATE TABLE big (id int, v vector(16000));
INSERT INTO big SELECT i, array_fill(i::real / 7, ARRAY[16000])::vector FROM generate_series(1, 5) i;
SELECT id, vector_dims(v), round(vector_norm(v)::numeric, 2), subvector(v, 15999, 2) FROM big ORDER BY id;
SELECT attstorage FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'v';
-- the 64 kB values are stored out of line, uncompressed (STORAGE external)
SELECT pg_relation_size(reltoastrelid) >= 5 * 64000 AS in_toast,
       pg_relation_size(oid) < 5 * 64000 AS heap_small FROM pg_class WHERE relname = 'big';

-- binary COPY out and back in gives the same values
CREATE TABLE small (id int, v vector);
INSERT INTO small VALUES (1, '[1,2,3]'), (2, '[-0,1e-07,3e+20]'), (3, '[1.2345679e-30]'), (4, NULL);
\copy small TO '/tmp/akidb_regress_small.bin' WITH (FORMAT binary)
CREATE TABLE small2 (LIKE small);
\copy small2 FROM '/tmp/akidb_regress_small.bin' WITH (FORMAT binary)
SELECT a.id, a.v, b.v, a.v IS NOT DISTINCT FROM b.v AS same FROM small a JOIN small2 b USING (id) ORDER BY id;
\copy big TO '/tmp/akidb_regress_big.bin' WITH (FORMAT binary)
CREATE TABLE big2 (LIKE big);
\copy big2 FROM '/tmp/akidb_regress_big.bin' WITH (FORMAT binary)
SELECT count(*) FROM big a JOIN big2 b USING (id) WHERE a.v = b.v;
-- the wire format: int16 dim, int16 unused, float4s, network order
SELECT vector_send('[1,-2]'::vector);
-- recv rejects a wrong typmod on the way in
CREATE TABLE small3 (id int, v vector(2));
\copy small3 FROM '/tmp/akidb_regress_small.bin' WITH (FORMAT binary)
DROP TABLE big, big2, small, small2, small3;
