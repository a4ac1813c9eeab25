SELECT
    ticket_id,
    CASE
        WHEN priority = 1 THEN 'urgent'
        WHEN priority = 2 THEN 'high'
        ELSE 'normal'
    END AS priority_label,
    COALESCE(assignee, 'unassigned') AS owner,
    NULLIF(resolution, '') as resolution
FROM tickets
WHERE closed_at IS NULL
