-- Casts between arrays and vector.

SELECT '{1,2,3}'::real[]::vector, '{1,2}'::double precision[]::vector,
       '{1,2}'::integer[]::vector, '{1.5,2}'::numeric[]::vector;
SELECT '[1,2.5]'::vector::real[];
SELECT ARRAY[1,2,3]::vector(3);
SELECT err($$SELECT '{1,NULL}'::real[]::vector$$);
SELECT err($$SELECT '{}'::real[]::vector$$);
SELECT err($$SELECT '{{1,2},{3,4}}'::real[]::vector$$);
SELECT err($$SELECT '{1,2,3}'::real[]::vector(2)$$);
SELECT err($$SELECT '{1e300}'::float8[]::vector$$);
SELECT err($$SELECT '{NaN}'::float8[]::vector$$);
SELECT err($$SELECT '{Infinity}'::real[]::vector$$);
SELECT err($$SELECT '{1e400}'::numeric[]::vector$$);
SELECT err($$SELECT array_fill(1::real, ARRAY[16001])::vector$$);
-- assignment casts work in INSERT; the vector -> real[] cast is implicit
CREATE TABLE cast_t (v vector(2), a real[]);
INSERT INTO cast_t (v) VALUES (ARRAY[1,2]), ('{3,4}'::float8[]);
UPDATE cast_t SET a = v;
SELECT * FROM cast_t ORDER BY v;
DROP TABLE cast_t;
SELECT castsource::regtype, casttarget::regtype, castcontext FROM pg_cast
WHERE castsource = 'vector'::regtype OR casttarget = 'vector'::regtype ORDER BY 1::text, 2::text;
