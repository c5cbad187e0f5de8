-- Why: retention (RECEIVER_RETENTION_DAYS). A message nobody has touched for that long is
-- deleted with its events and aliases; then raw receipts that no remaining event refers to,
-- and settled deliveries, past the same age.

-- Deleting a message takes its events and aliases with it.
alter table events
    drop constraint events_provider_message_key_fkey,
    add constraint events_provider_message_key_fkey foreign key (provider, message_key)
        references messages (provider, key) on delete cascade;
alter table aliases
    drop constraint aliases_provider_message_key_fkey,
    add constraint aliases_provider_message_key_fkey foreign key (provider, message_key)
        references messages (provider, key) on delete cascade;
-- The cascade finds a message's aliases by this (the key is the alias, not the message).
create index aliases_message_idx on aliases (provider, message_key);
-- A receipt may go once no event refers to it; the check (and the foreign key's own, on
-- delete) looks events up by receipt. Receipt ids are time-ordered, so this index grows at
-- its right-hand end.
create index events_receipt_idx on events (receipt_id);

-- Events stay append-only: no update, no delete of its own. A delete arriving through the
-- foreign key's cascade runs one trigger level down (pg_trigger_depth() = 2): that is a
-- message being deleted, and its events go with it.
create or replace function events_are_append_only() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' and pg_trigger_depth() > 1 then
        return old;
    end if;
    raise exception 'events are append-only';
end
$$;
