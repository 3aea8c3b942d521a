-- A user may hold more than one coupon of an event (perUserLimit, at most 100): each is its
-- own row with its ordinal, 1 up to the event's limit per user, unique per user. Rows from
-- before hold ordinal 1, which keeps them unique exactly as the old key did. SQLite cannot
-- drop a constraint, so the table is rebuilt.
CREATE TABLE coupons_with_ordinals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL CHECK (length(event) <= 320),
    user_id TEXT NOT NULL CHECK (length(user_id) BETWEEN 1 AND 128),
    slot INTEGER NOT NULL CHECK (slot >= 1),
    ordinal INTEGER NOT NULL DEFAULT 1 CHECK (ordinal BETWEEN 1 AND 100),
    issued_at TEXT NOT NULL,
    CONSTRAINT coupons_event_user_ordinal UNIQUE (event, user_id, ordinal),
    CONSTRAINT coupons_event_slot UNIQUE (event, slot),
    CONSTRAINT coupons_slot_exists FOREIGN KEY (event, slot) REFERENCES coupon_slots (event, slot)
);
INSERT INTO coupons_with_ordinals (id, event, user_id, slot, ordinal, issued_at)
    SELECT id, event, user_id, slot, 1, issued_at FROM coupons;
DROP TABLE coupons;
ALTER TABLE coupons_with_ordinals RENAME TO coupons;
