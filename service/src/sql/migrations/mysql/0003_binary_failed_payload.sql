-- A failed record's payload is kept byte for byte: a record is failed precisely because it
-- may be anything, and a utf8mb4 TEXT column refuses invalid UTF-8.
ALTER TABLE failed_events MODIFY payload LONGBLOB NOT NULL;
