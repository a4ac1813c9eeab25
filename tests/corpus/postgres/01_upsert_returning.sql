INSERT INTO page_views (page_id, view_date, views)
VALUES (42, CURRENT_DATE, 1)
ON CONFLICT (page_id, view_date)
DO UPDATE SET views = page_views.views + EXCLUDED.views
RETURNING page_id, views;
