UPDATE inventory
SET quantity = quantity - 1,
    updated_at = CURRENT_TIMESTAMP
WHERE sku = 'A-1002' AND quantity > 0;

DELETE FROM sessions WHERE last_seen < CURRENT_DATE - 30 ;

INSERT INTO audit_log (event_type, detail) VALUES ('cleanup', 'sessions purged');
