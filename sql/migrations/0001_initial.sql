-- Why: the foundation. Raw receipts, messages with their channel attempts and provider ids,
-- and the append-only event timeline from which every current status is derived.

-- Every request body as it arrived (webhook, poll response, send registration), so a mapping
-- fix can be re-applied to history and nothing authenticated is ever silently dropped.
create table receipts (
    id uuid primary key,
    provider text not null,
    source text not null check (source in ('webhook', 'poll', 'send')),
    received_at timestamptz not null default now(),
    content_type text,
    body bytea not null,
    -- Set when part or all of the body could not be used; the body is kept regardless.
    problem text
);
create index receipts_problem_idx on receipts (received_at) where problem is not null;

-- One row per logical message (Messente omnimessage, Infobip/Comapi message, Mercury dispatch
-- recipient). Status columns are derived from events by receiver/status.py at ingest.
create table messages (
    provider text not null,
    key text not null,
    group_key text,
    recipient text,
    reference text,
    -- Channel order from the registered send request; drives omnichannel composition.
    channel_order text[],
    -- Mirrors receiver.status.Status.
    status text not null default 'unknown' check (
        status in ('accepted', 'sent', 'delivered', 'read', 'failed', 'expired', 'rejected',
                   'cancelled', 'unknown')
    ),
    status_at timestamptz,
    channel text,
    -- [{channel, status, occurred_at, message_id}] in attempt order, derived like status.
    attempts jsonb not null default '[]',
    -- Bumped on every status change, so subscribers can order what they receive.
    seq integer not null default 0,
    registered_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (provider, key)
);
-- Search is keyset-paginated newest first on (created_at, provider, key), all descending.
create index messages_recipient_idx on messages (recipient, created_at desc, provider desc, key desc);
create index messages_status_idx on messages (status, created_at desc, provider desc, key desc);
create index messages_created_idx on messages (created_at desc, provider desc, key desc);
create index messages_group_idx on messages (provider, group_key, key) where group_key is not null;

-- Every provider id that finds a message besides its key (Messente channel message_ids).
create table aliases (
    provider text not null,
    alias text not null,
    message_key text not null,
    primary key (provider, alias),
    foreign key (provider, message_key) references messages (provider, key)
);

-- The timeline: append-only. The unique key is what makes a retried, or pushed-and-polled,
-- report one event.
create table events (
    id bigint generated always as identity primary key,
    provider text not null,
    message_key text not null,
    dedup_key text not null,
    -- Mirrors receiver.status.Status.
    status text not null check (
        status in ('accepted', 'sent', 'delivered', 'read', 'failed', 'expired', 'rejected',
                   'cancelled', 'unknown')
    ),
    provider_status text,
    provider_code text,
    error_code text,
    error_text text,
    permanent boolean,
    channel text,
    attempt_id text,
    occurred_at timestamptz,
    received_at timestamptz not null default now(),
    source text not null check (source in ('webhook', 'poll', 'send')),
    receipt_id uuid not null references receipts (id),
    details jsonb not null default '{}',
    unique (provider, message_key, dedup_key),
    foreign key (provider, message_key) references messages (provider, key)
);

-- Append-only means append-only: history is corrected by new events, never by edits.
create function events_are_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'events are append-only';
end
$$;
create trigger events_append_only before update or delete on events
    for each row execute function events_are_append_only();

-- Provider status values we could not map, counted, so a mapping gap shows up in the API.
create table unmapped (
    provider text not null,
    provider_status text not null,
    count bigint not null default 0,
    first_seen timestamptz not null default now(),
    last_seen timestamptz not null default now(),
    primary key (provider, provider_status)
);
