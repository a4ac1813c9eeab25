CREATE SCHEMA IF NOT EXISTS billing;

CREATE TABLE billing.invoices (
    invoice_id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now(),
    amount numeric(12,2) CHECK (amount >= 0),
    tags text[] DEFAULT '{}',
    status varchar(20) DEFAULT 'open'
);

CREATE INDEX CONCURRENTLY idx_invoices_customer ON billing.invoices (customer_id, issued_at DESC);
