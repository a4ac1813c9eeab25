INSERT INTO daily_stats (stat_date, hits)
VALUES (CURDATE(), 1)
ON DUPLICATE KEY UPDATE hits = hits + 1;
