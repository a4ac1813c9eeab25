-- Orders per customer in the last quarter
SELECT
    c.customer_id,
    c.full_name,
    COUNT(o.order_id) AS order_count,
    SUM(o.total_amount) AS revenue
FROM customers AS c
INNER JOIN orders AS o
    ON c.customer_id = o.customer_id
WHERE o.order_date >= DATE '2024-01-01'
GROUP BY c.customer_id, c.full_name
HAVING COUNT(o.order_id) > 3
ORDER BY revenue DESC;
