SELECT id, title, published_at
FROM articles
WHERE published = 1
ORDER BY published_at DESC
LIMIT 20 OFFSET 40;
