SELECT
    DATE_FORMAT(created_at, '%Y-%m') AS month,
    COUNT(*) AS signups,
    SUM(IF(referrer IS NULL, 0, 1)) AS referred
FROM users
WHERE created_at >= DATE_SUB(CURDATE(), INTERVAL 1 YEAR)
GROUP BY month;
