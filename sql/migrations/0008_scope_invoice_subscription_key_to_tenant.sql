-- Foreign-key checks bypass RLS: with invoices.subscription_id REFERENCES subscriptions (id)
-- alone, tenant A could point its invoice at tenant B's subscription (learning that the id
-- exists, and pinning B's row). The key now includes the tenant, so a reference can only
-- ever name a subscription of the same organization.
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_organization_id_id_key UNIQUE (organization_id, id);
ALTER TABLE invoices DROP CONSTRAINT invoices_subscription_id_fkey;
ALTER TABLE invoices ADD CONSTRAINT invoices_organization_subscription_fkey
    FOREIGN KEY (organization_id, subscription_id) REFERENCES subscriptions (organization_id, id);
