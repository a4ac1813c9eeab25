WITH monthly AS (
    SELECT
        product_id,
        EXTRACT(MONTH FROM sold_at) AS sale_month,
        SUM(quantity) AS units
    FROM sales
    GROUP BY product_id, EXTRACT(MONTH FROM sold_at)
),

ranked AS (
    SELECT
        product_id,
        sale_month,
        units,
        RANK() OVER (PARTITION BY sale_month ORDER BY units DESC) AS rnk
    FROM monthly
)

SELECT * FROM ranked WHERE rnk <= 5
