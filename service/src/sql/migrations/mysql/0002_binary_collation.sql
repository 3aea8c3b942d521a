-- Ids compare byte for byte, as in Redis, Kafka, PostgreSQL and SQLite: the server's default
-- collation is case-insensitive, which made `Bob` and `bob` one user (and two topics that
-- differ by case one topic). The foreign key is dropped around the change because InnoDB
-- refuses to change the collation of a column a foreign key uses.
ALTER TABLE coupons DROP FOREIGN KEY coupons_slot_exists;
ALTER TABLE coupon_slots MODIFY event VARCHAR(320) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE coupons
    MODIFY event VARCHAR(320) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    MODIFY user_id VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE coupons ADD CONSTRAINT coupons_slot_exists FOREIGN KEY (event, slot) REFERENCES coupon_slots (event, slot);
ALTER TABLE failed_events MODIFY topic VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
