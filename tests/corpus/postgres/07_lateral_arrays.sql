SELECT u.id, t.tag
FROM users u,
LATERAL unnest(u.tags) AS t(tag)
WHERE t.tag ILIKE 'admin%' AND u.id = ANY(ARRAY[1,2,3]);
