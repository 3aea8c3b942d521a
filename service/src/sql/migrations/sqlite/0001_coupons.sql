-- One row per slot an event may hand out: coupons reference it, so the database itself
-- cannot hold more coupons for an event than it has slots (1..=limit).
CREATE TABLE coupon_slots (
    event TEXT NOT NULL,
    slot INTEGER NOT NULL CHECK (slot >= 1),
    PRIMARY KEY (event, slot)
);

CREATE TABLE coupons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL CHECK (length(event) <= 320),
    user_id TEXT NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    slot INTEGER NOT NULL CHECK (slot >= 1),
    issued_at TEXT NOT NULL,
    CONSTRAINT coupons_event_user UNIQUE (event, user_id),
    CONSTRAINT coupons_event_slot UNIQUE (event, slot),
    CONSTRAINT coupons_slot_exists FOREIGN KEY (event, slot) REFERENCES coupon_slots (event, slot)
);

-- Records the consumer could not parse or write (the seed's failed_event table).
CREATE TABLE failed_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset INTEGER NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    failed_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT failed_events_position UNIQUE (topic, kafka_partition, kafka_offset)
);
