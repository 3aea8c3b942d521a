-- A user may hold more than one coupon of an event (perUserLimit, at most 100): each is its
-- own row with its ordinal, 1 up to the event's limit per user, unique per user. Rows from
-- before hold ordinal 1, which keeps them unique exactly as the old key did. One statement:
-- MariaDB does not run DDL in a transaction, and a half-applied change could not be re-run.
ALTER TABLE coupons
    ADD COLUMN ordinal INTEGER NOT NULL DEFAULT 1,
    ADD CONSTRAINT coupons_ordinal_range CHECK (ordinal BETWEEN 1 AND 100),
    ADD CONSTRAINT coupons_event_user_ordinal UNIQUE (event, user_id, ordinal),
    DROP INDEX coupons_event_user;
