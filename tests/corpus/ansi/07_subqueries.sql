SELECT p.name, p.price
FROM products p
WHERE p.price > (SELECT AVG(price) FROM products)
  AND p.category_id IN (SELECT category_id FROM categories WHERE visible = TRUE)
  AND EXISTS (SELECT 1 FROM stock s WHERE s.product_id = p.product_id);
