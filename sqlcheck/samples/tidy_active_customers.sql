-- Customers with at least one order in the last period, and their latest order.
WITH latest AS (
    SELECT
        customer_id,
        MAX(ordered_at) AS last_ordered_at
    FROM orders
    GROUP BY customer_id
)

SELECT
    c.customer_id,
    c.name,
    latest.last_ordered_at
FROM customers AS c
INNER JOIN latest
    ON c.customer_id = latest.customer_id
