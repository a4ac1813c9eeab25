UPDATE products p
JOIN price_changes c ON c.product_id = p.id
SET p.price = c.new_price, p.updated_at = NOW()
WHERE c.applied = 0;
