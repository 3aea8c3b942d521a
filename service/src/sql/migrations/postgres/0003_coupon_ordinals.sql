-- A user may hold more than one coupon of an event (perUserLimit, at most 100): each is its
-- own row with its ordinal, 1 up to the event's limit per user, unique per user. Rows from
-- before hold ordinal 1, which keeps them unique exactly as the old key did.
ALTER TABLE coupons ADD COLUMN ordinal INTEGER NOT NULL DEFAULT 1
    CONSTRAINT coupons_ordinal_range CHECK (ordinal BETWEEN 1 AND 100);
ALTER TABLE coupons ADD CONSTRAINT coupons_event_user_ordinal UNIQUE (event, user_id, ordinal);
ALTER TABLE coupons DROP CONSTRAINT coupons_event_user;
