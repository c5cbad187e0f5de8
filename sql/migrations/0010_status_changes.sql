-- Why: a replay of a time range must re-send every status change in it that matches the
-- subscription, also those raised while it was disabled (after a 410, or five days of
-- failures), which were never queued for it. Deliveries hold only what was queued, so every
-- status change is now kept here, with the payload subscribers are sent, written in the same
-- statement as the deliveries it queues. Rows go with their message (retention).
create table status_changes (
    provider text not null,
    message_key text not null,
    seq integer not null,
    status text not null,
    -- The webhook-id: derived from (provider, message_key, seq), the same for every
    -- subscription and every replay.
    event_id text not null,
    payload jsonb not null,
    -- The projection's transaction time: the created_at of the deliveries queued with it.
    changed_at timestamptz not null default now(),
    primary key (provider, message_key, seq),
    foreign key (provider, message_key) references messages (provider, key) on delete cascade
);
create index status_changes_changed_idx on status_changes (changed_at);

-- The changes queued before this migration are the history it can give: one per change,
-- from any subscription's delivery of it, for messages still stored.
insert into status_changes (provider, message_key, seq, status, event_id, payload, changed_at)
select distinct on (d.provider, d.message_key, d.seq)
       d.provider, d.message_key, d.seq, d.status, d.event_id, d.payload, d.created_at
from deliveries d
join messages m on m.provider = d.provider and m.key = d.message_key
order by d.provider, d.message_key, d.seq, d.created_at;
