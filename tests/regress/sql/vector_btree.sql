-- Comparison operators and the btree operator class.

SELECT '[1,2]'::vector < '[1,2,3]', '[1,2]'::vector = '[1,2]', '[2]'::vector > '[1,5]',
       '[1,2]'::vector <> '[1,3]', '[1,2]'::vector <= '[1,2]', '[1,2]'::vector >= '[1,3]',
       '[-0]'::vector = '[0]';
SELECT vector_cmp('[1,2]', '[1,2,0]'), vector_cmp('[1,3]', '[1,2]'), vector_cmp('[1,2]', '[1,2]');

CREATE TABLE bt (id int, v vector);
INSERT INTO bt VALUES (1, '[3,1]'), (2, '[1,2,3]'), (3, '[1,2]'), (4, '[1]'), (5, '[2,0]'), (6, NULL);
SELECT id, v FROM bt ORDER BY v, id;
CREATE UNIQUE INDEX bt_v ON bt USING btree (v);
SELECT err($$INSERT INTO bt VALUES (7, '[1,2]')$$);
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM bt WHERE v = '[1,2]';
SELECT id FROM bt WHERE v = '[1,2]';
SELECT id FROM bt WHERE v > '[1,2]' ORDER BY v;
RESET enable_seqscan;
SELECT DISTINCT v FROM (VALUES ('[1,2]'::vector), ('[1,2]'), ('[2,1]')) t(v) ORDER BY v;
SELECT v, count(*) FROM (VALUES ('[1,2]'::vector), ('[1,2]'), ('[2,1]')) t(v) GROUP BY v ORDER BY v;
DROP TABLE bt;
