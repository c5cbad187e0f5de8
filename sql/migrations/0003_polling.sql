-- Why: polling. Each unfinished message of a provider polled per message (Messente, Comapi,
-- Mercury) carries its own schedule; past the maximum age it stops and is marked stale.

alter table messages
    add column next_poll_at timestamptz,
    add column poll_attempts integer not null default 0,
    -- Polling gave up on it (too old); its status is the last one known.
    add column stale boolean not null default false;

create index messages_poll_due_idx on messages (next_poll_at)
    where next_poll_at is not null and not stale;
