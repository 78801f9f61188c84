-- The billing tables every tenant has rows in. Money is NUMERIC(20,6), never float.
CREATE TABLE organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subscriptions (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES organizations (id),
    plan             text NOT NULL,
    status           text NOT NULL CHECK (status IN ('active', 'trialing', 'past_due', 'canceled')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    canceled_at      timestamptz
);
CREATE INDEX subscriptions_organization_id_status_idx ON subscriptions (organization_id, status);

CREATE TABLE invoices (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES organizations (id),
    subscription_id  uuid REFERENCES subscriptions (id),
    amount           numeric(20, 6) NOT NULL,
    currency         char(3) NOT NULL DEFAULT 'USD',
    status           text NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'void', 'uncollectible')),
    issued_at        timestamptz NOT NULL DEFAULT now(),
    due_at           timestamptz
);
CREATE INDEX invoices_organization_id_issued_at_idx ON invoices (organization_id, issued_at);

CREATE TABLE payment_methods (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL REFERENCES organizations (id),
    kind             text NOT NULL CHECK (kind IN ('card', 'bank_account', 'invoice')),
    last4            char(4),
    is_default       boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_methods_organization_id_idx ON payment_methods (organization_id);

ALTER TABLE organizations OWNER TO billing_owner;
ALTER TABLE subscriptions OWNER TO billing_owner;
ALTER TABLE invoices OWNER TO billing_owner;
ALTER TABLE payment_methods OWNER TO billing_owner;
