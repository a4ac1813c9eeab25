SET @cutoff = '2024-01-01';
SELECT id, total FROM invoices WHERE issued_on >= @cutoff AND total > 100;
