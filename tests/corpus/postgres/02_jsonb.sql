SELECT
    id,
    payload ->> 'event' AS event_name,
    (payload -> 'user' ->> 'id')::int AS user_id,
    payload @> '{"source": "mobile"}'::jsonb AS from_mobile
FROM events
WHERE created_at > now() - interval '7 days'
  AND payload ? 'user';
