-- Monthly order totals per customer segment.
SELECT
    c.segment,
    o.order_month,
    COUNT(*) AS order_count,
    SUM(o.amount) AS total_amount
FROM orders AS o
INNER JOIN customers AS c
    ON o.customer_id = c.customer_id
WHERE o.status = 'shipped'
GROUP BY
    c.segment,
    o.order_month
ORDER BY
    c.segment,
    o.order_month
