CREATE VIEW active_accounts AS
SELECT a.account_id, a.owner_id, a.balance
FROM accounts AS a
WHERE a.closed = FALSE;

DROP VIEW IF EXISTS legacy_accounts;
