ALTER TABLE billing.invoices ADD COLUMN paid_at timestamptz;
ALTER TABLE billing.invoices ALTER COLUMN status SET NOT NULL;
GRANT SELECT, INSERT ON billing.invoices TO reporting_role;
COMMENT ON TABLE billing.invoices IS 'Customer invoices';
