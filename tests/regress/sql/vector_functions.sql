-- Distances, arithmetic and the other functions, with their errors.

SELECT l2_distance('[0,0]'::vector, '[3,4]'), '[0,0]'::vector <-> '[3,4]';
SELECT round(l2_distance('[1,2]'::vector, '[3,5]')::numeric, 6);
SELECT inner_product('[1,2]'::vector, '[3,4]'), '[1,2]'::vector <#> '[3,4]';
SELECT cosine_distance('[1,2]'::vector, '[2,4]'), '[1,0]'::vector <=> '[0,1]', '[1,1]'::vector <=> '[-1,-1]';
SELECT '[0,0]'::vector <=> '[1,1]';   -- cosine with a zero vector is NaN
SELECT l1_distance('[1,2]'::vector, '[3,5]'), '[1,2]'::vector <+> '[3,5]';
SELECT vector_l2_squared_distance('[0,0]'::vector, '[3,4]');
SELECT err($$SELECT '[1,2]'::vector <-> '[1,2,3]'$$);
SELECT err($$SELECT '[1,2]'::vector <=> '[1,2,3]'$$);
SELECT err($$SELECT inner_product('[1]'::vector, '[1,2]')$$);
SELECT err($$SELECT l1_distance('[1]'::vector, '[1,2]')$$);

-- SIMD and scalar paths must agree: long vectors with non-trivial tails
SELECT round(l2_distance(a, b)::numeric, 3), round(inner_product(a, b)::numeric, 3),
       round(cosine_distance(a, b)::numeric, 6), round(l1_distance(a, b)::numeric, 3)
FROM (SELECT array_agg(i % 7 - 3)::real[]::vector AS a, array_agg((i * 3) % 11 - 5)::real[]::vector AS b
      FROM generate_series(1, 1003) i) t;

-- arithmetic
SELECT '[1,2,3]'::vector + '[4,5,6]', '[1,2,3]'::vector - '[4,5,6]', '[1,2,3]'::vector * '[4,5,6]';
SELECT err($$SELECT '[1,2]'::vector + '[1,2,3]'$$);
SELECT err($$SELECT '[3e38]'::vector + '[3e38]'$$);
SELECT err($$SELECT '[-3e38]'::vector - '[3e38]'$$);
SELECT err($$SELECT '[3e38]'::vector * '[10]'$$);
SELECT err($$SELECT '[1e-30]'::vector * '[1e-30]'$$);
SELECT '[1,2]'::vector || '[3]';
SELECT vector_dims(array_fill(1::real, ARRAY[8000])::vector || array_fill(1::real, ARRAY[8000])::vector);
SELECT err($$SELECT array_fill(1::real, ARRAY[8000])::vector || array_fill(1::real, ARRAY[8001])::vector$$);

-- other functions
SELECT vector_dims('[1,2,3]'::vector), vector_norm('[3,4]'), vector_norm('[0,0]');
SELECT l2_normalize('[3,4]'::vector), l2_normalize('[0,0]'::vector), l2_normalize('[1e-30,0]'::vector);
SELECT subvector('[1,2,3,4,5]'::vector, 2, 3), subvector('[1,2,3,4,5]'::vector, 0, 3), subvector('[1,2,3,4,5]'::vector, 4, 10);
SELECT err($$SELECT subvector('[1,2,3,4,5]'::vector, 6, 1)$$);
SELECT err($$SELECT subvector('[1,2,3,4,5]'::vector, 1, 0)$$);
SELECT err($$SELECT subvector('[1,2,3,4,5]'::vector, 2147483647, 2147483647)$$);
SELECT akidb_simd() IN ('avx512', 'avx2', 'neon', 'scalar');

-- volatility and strictness, as pgvector declares them
SELECT proname, provolatile, proisstrict, proparallel FROM pg_proc
WHERE proname IN ('l2_distance', 'vector_in', 'vector_add', 'subvector', 'vector_accum') ORDER BY 1;
