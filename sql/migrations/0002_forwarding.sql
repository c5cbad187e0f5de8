-- Why: forwarding. Subscriptions, and an outbox of deliveries written in the same transaction
-- as the status change they announce, so a committed change always reaches its subscribers.

create table subscriptions (
    id uuid primary key,
    url text not null,
    description text,
    -- null means every status / every provider.
    statuses text[],
    providers text[],
    enabled boolean not null default true,
    disabled_reason text,
    -- Standard Webhooks secrets ("whsec_" + base64). During a rotation the previous one keeps
    -- signing alongside the new one until previous_secret_expires_at.
    secret text not null,
    previous_secret text,
    previous_secret_expires_at timestamptz,
    -- Start of the current run of failed attempts; cleared by any success.
    failing_since timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- One row per (status change, matching subscription). Delivery is at least once; event_id is
-- the webhook-id, the same on every retry and replay, so receivers can drop repeats.
create table deliveries (
    id uuid primary key,
    subscription_id uuid not null references subscriptions (id) on delete cascade,
    event_id text not null,
    provider text not null,
    message_key text not null,
    seq integer not null,
    status text not null,
    payload jsonb not null,
    state text not null default 'pending' check (state in ('pending', 'delivered', 'dead')),
    attempts integer not null default 0,
    -- When it is next due. A claim pushes this out by the lease, so a forwarder that dies
    -- mid-delivery leaves the row to be claimed again once the lease runs out.
    next_attempt_at timestamptz not null default now(),
    last_status integer,
    last_error text,
    created_at timestamptz not null default now(),
    delivered_at timestamptz,
    unique (subscription_id, event_id)
);
create index deliveries_due_idx on deliveries (next_attempt_at) where state = 'pending';
create index deliveries_subscription_idx on deliveries (subscription_id, created_at desc, id desc);

create table delivery_attempts (
    id bigint generated always as identity primary key,
    delivery_id uuid not null references deliveries (id) on delete cascade,
    attempted_at timestamptz not null default now(),
    duration_ms integer,
    status_code integer,
    error text
);
create index delivery_attempts_delivery_idx on delivery_attempts (delivery_id, id);
