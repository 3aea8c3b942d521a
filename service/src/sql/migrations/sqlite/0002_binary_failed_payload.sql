-- A failed record's payload is kept byte for byte (a BLOB): a record is failed precisely
-- because it may be anything. SQLite cannot change a column's type, so the table is rebuilt.
CREATE TABLE failed_events_binary (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset INTEGER NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    failed_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT failed_events_binary_position UNIQUE (topic, kafka_partition, kafka_offset)
);
INSERT INTO failed_events_binary (id, topic, kafka_partition, kafka_offset, payload, reason, failed_at)
    SELECT id, topic, kafka_partition, kafka_offset, CAST(payload AS BLOB), reason, failed_at FROM failed_events;
DROP TABLE failed_events;
ALTER TABLE failed_events_binary RENAME TO failed_events;
