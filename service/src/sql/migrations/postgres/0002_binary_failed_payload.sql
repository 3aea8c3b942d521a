-- A failed record's payload is kept byte for byte: a record is failed precisely because it
-- may be anything, and TEXT refuses a NUL byte or invalid UTF-8 (which held the partition).
ALTER TABLE failed_events ALTER COLUMN payload TYPE BYTEA USING convert_to(payload, 'UTF8');
