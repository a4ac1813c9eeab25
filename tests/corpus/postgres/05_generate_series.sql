SELECT d::date AS day, COALESCE(count(s.id), 0) AS signups
FROM generate_series('2024-01-01'::date, '2024-01-31'::date, interval '1 day') AS d
LEFT JOIN signups AS s ON s.created_at::date = d::date
GROUP BY d
ORDER BY d;
