ALTER TABLE orders ADD COLUMN shipped_at DATETIME NULL AFTER status;
CREATE INDEX idx_orders_status ON orders (status, created_at);
DROP TABLE IF EXISTS tmp_import;
