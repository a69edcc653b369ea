-- Runs first: the extension, and err(), which runs a statement and shows the SQLSTATE,
-- message and detail of the error it raises (or 'no error'), so that every expected
-- error's code is part of the expected output.
CREATE EXTENSION akidb;
CREATE FUNCTION err(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || SQLERRM || CASE WHEN detail <> '' THEN ' (' || detail || ')' ELSE '' END;
END
$$;
SELECT err('SELECT 1/0');
SELECT err('SELECT 1');
