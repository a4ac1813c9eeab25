-- Refunds per day; mixed keyword case and a trailing space or two.
SELECT refund_date, count(*) as refunds, Sum(amount) as refunded   
FROM refunds
where reason <> 'duplicate'
GROUP BY refund_date
