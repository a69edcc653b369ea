-- Text input/output of vector: pgvector's format, limits and errors.

SELECT '[1,2,3]'::vector;
SELECT ' [ 1 , -2.5 ,3e2 ] '::vector;
SELECT '[1.5, 2 ,3e20, -0, 1e-7, 0.1, 123456789, 1.23456789e-30]'::vector;
SELECT '[0.0001,0.00001,123456,1234567,999999,1e38]'::vector;
SELECT '[+.5,5.,1E-2]'::vector;
SELECT '[1e-50]'::vector;     -- underflow to zero is allowed, as in float4
SELECT '[1,2,3]'::vector::text = '[1,2,3]';

-- malformed text: 22P02 with a detail where pgvector gives one
SELECT err($$SELECT '[1,2,]'::vector$$);
SELECT err($$SELECT '1,2'::vector$$);
SELECT err($$SELECT '[1,2] x'::vector$$);
SELECT err($$SELECT '[1 2]'::vector$$);
SELECT err($$SELECT '[a]'::vector$$);
SELECT err($$SELECT ''::vector$$);
-- empty, NaN, infinity, out of range
SELECT err($$SELECT '[]'::vector$$);
SELECT err($$SELECT '[NaN]'::vector$$);
SELECT err($$SELECT '[1,Infinity]'::vector$$);
SELECT err($$SELECT '[-inf]'::vector$$);
SELECT err($$SELECT '[1e39]'::vector$$);

-- the dimension limit: 16,000 ok, 16,001 not
SELECT vector_dims(('[' || array_to_string(array_fill(1, ARRAY[16000]), ',') || ']')::vector);
SELECT err($$SELECT ('[' || array_to_string(array_fill(1, ARRAY[16001]), ',') || ']')::vector$$);

-- typmod
SELECT '[1,2,3]'::vector(3);
SELECT err($$SELECT '[1,2,3]'::vector(2)$$);
SELECT err($$SELECT '[1,2]'::vector(0)$$);
SELECT err($$SELECT '[1,2]'::vector(16001)$$);
SELECT err($$SELECT '[1,2]'::vector(2,3)$$);
SELECT err($$SELECT '[1,2]'::vector('a')$$);
SELECT err($$SELECT '[1,2]'::vector::vector(3)$$);
CREATE TABLE typmod_t (v vector(3));
INSERT INTO typmod_t VALUES ('[1,2,3]');
SELECT err($$INSERT INTO typmod_t VALUES ('[1,2]')$$);
SELECT err($$INSERT INTO typmod_t VALUES ('[1,2,3,4]'::vector)$$);
SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'typmod_t'::regclass AND attname = 'v';
SELECT * FROM typmod_t;
DROP TABLE typmod_t;

-- NULL handling
SELECT NULL::vector;
SELECT vector_dims(NULL::vector);
