-- One row per slot an event may hand out: coupons reference it, so the database itself
-- cannot hold more coupons for an event than it has slots (1..=limit).
CREATE TABLE coupon_slots (
    event VARCHAR(320) NOT NULL,
    slot BIGINT NOT NULL CHECK (slot >= 1),
    PRIMARY KEY (event, slot)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE coupons (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event VARCHAR(320) NOT NULL,
    user_id VARCHAR(128) NOT NULL,
    slot BIGINT NOT NULL CHECK (slot >= 1),
    issued_at DATETIME(6) NOT NULL,
    CONSTRAINT coupons_event_user UNIQUE (event, user_id),
    CONSTRAINT coupons_event_slot UNIQUE (event, slot),
    CONSTRAINT coupons_slot_exists FOREIGN KEY (event, slot) REFERENCES coupon_slots (event, slot)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Records the consumer could not parse or write (the seed's failed_event table).
CREATE TABLE failed_events (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    topic VARCHAR(255) NOT NULL,
    kafka_partition INT NOT NULL,
    kafka_offset BIGINT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    failed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    CONSTRAINT failed_events_position UNIQUE (topic, kafka_partition, kafka_offset)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
