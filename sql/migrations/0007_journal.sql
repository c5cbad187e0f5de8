-- Why: journal-first ingest. A provider's request is acknowledged once one journal row (its
-- raw body and the updates parsed from it) is committed; the projector applies the journal to
-- messages, events, aliases and the outbox behind it. The journal replaces `receipts`: it is
-- the raw record of every request, and the source every projection can be rebuilt from.

create sequence journal_id_seq as bigint;

create table journal (
    -- Monotonic in insertion order, but not in commit order: the projector reads by (xid, id)
    -- below the oldest transaction still running, never by id alone (see projection_progress).
    id bigint not null default nextval('journal_id_seq'),
    xid xid8 not null default pg_current_xact_id(),
    -- The public id of the request body (GET /v1/receipts/{id}); time-ordered (UUID v7 layout).
    receipt_id uuid not null,
    received_at timestamptz not null default now(),
    provider text not null,
    -- Mirrors receiver.reports.Source.
    source text not null check (source in ('webhook', 'poll', 'send')),
    content_type text,
    body bytea not null,
    -- Set when part or all of the body could not be used; the body is kept regardless.
    problem text,
    -- What the parser read, in receiver/ingest/codec.py's compact form (JSON as bytes: a
    -- provider's text may hold NUL, which jsonb refuses; the projector deals with that).
    -- Null: the projector parses the body (a batch provider's webhook, checked on arrival).
    updates bytea,
    -- How many reports it holds (for a null `updates`, how many the body says it has).
    update_count integer not null,
    -- A reprocess run: the receipt whose body this row read again (its events point there).
    replays uuid
) partition by range (received_at);

create index journal_projection_idx on journal (xid, id);
create index journal_receipt_idx on journal (receipt_id);
create index journal_problem_idx on journal (received_at) where problem is not null;

-- A safety net, never the plan: rows land here only when no day partition covers them (the
-- service creates them ahead, hourly). Retention cannot drop it, so it is kept small.
create table journal_default partition of journal default;

-- Day partitions from `first_day` to `last_day`, so retention drops whole days. A day whose
-- rows already went to the default partition is left to it (creating it would fail).
create function journal_ensure_partitions(first_day date, last_day date) returns integer
language plpgsql as $$
declare
    day date := first_day;
    created integer := 0;
    name text;
begin
    -- Two processes creating the same day at once would collide in the catalog.
    perform pg_advisory_xact_lock(28266736153948782);  -- "dlr_jrn" in ASCII
    while day <= last_day loop
        name := 'journal_' || to_char(day, 'YYYYMMDD');
        if to_regclass(name) is null then
            begin
                execute format(
                    'create table %I partition of journal for values from (%L) to (%L)',
                    name, day::timestamptz, (day + 1)::timestamptz);
                created := created + 1;
            exception when check_violation then
                raise notice 'journal rows for % are in journal_default', day;
            end;
        end if;
        day := day + 1;
    end loop;
    return created;
end
$$;

-- How far projection has got: every journal row at or below (xid, id) is applied. Projectors
-- take turns on this row (FOR UPDATE), so nothing is applied twice or out of rule order.
create table projection_progress (
    lane integer primary key check (lane = 0),
    xid xid8 not null,
    id bigint not null,
    updated_at timestamptz not null default now()
);

-- The rows a projection batch writes, each sent as one typed array and read by column name.
-- receiver/ingest/queries.py mirrors each (MessageRow, EventRow, UnmappedRow, DeliveryRow):
-- change both or neither.
create type projected_message as (
    provider text, key text, recipient text, group_key text, reference text,
    channel_order text[], registered boolean, status text, status_at timestamptz, channel text,
    attempts text, seq integer, poll boolean, existed boolean, version bigint
);
create type projected_event as (
    provider text, message_key text, dedup_key text, status text, provider_status text,
    provider_code text, error_code text, error_text text, permanent boolean, channel text,
    attempt_id text, occurred_at timestamptz, received_at timestamptz, source text,
    receipt_id uuid, details text, corrects text
);
create type projected_unmapped as (provider text, provider_status text, seen bigint);
create type projected_delivery as (
    provider text, message_key text, seq integer, status text, event_id text, payload text
);

-- What was stored as receipts becomes the journal's history, already projected.
select journal_ensure_partitions(
    coalesce((select min(received_at)::date from receipts), current_date), current_date + 7);
insert into journal (id, receipt_id, received_at, provider, source, content_type, body, problem,
                     updates, update_count)
select nextval('journal_id_seq'), id, received_at, provider, source, content_type, body, problem,
       '[]'::bytea, 0
from receipts
order by received_at, id;
insert into projection_progress (lane, xid, id)
values (0, pg_current_xact_id(), (select last_value from journal_id_seq));

alter table events drop constraint events_receipt_id_fkey;
drop table receipts;

-- An event's arrival is its journal row's received_at; projected_at says when the projector
-- wrote it (their difference is the visibility delay).
alter table events
    add column projected_at timestamptz not null default now(),
    -- Re-mapping history: the dedup key of the event this one corrects. Events stay
    -- append-only; the status rules use the newest correction in place of what it corrects.
    add column corrects text;

-- Retention drops the journal a whole day at a time: the day partitions that end at or before
-- `before`, once projection has passed every row in them. Returns how many it dropped.
create function journal_drop_partitions(before timestamptz) returns integer
language plpgsql as $$
declare
    part record;
    unprojected boolean;
    dropped integer := 0;
begin
    for part in
        select c.relname as name from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'journal'::regclass and c.relname ~ '^journal_[0-9]{8}$'
          and (to_date(substr(c.relname, 9), 'YYYYMMDD') + 1)::timestamptz <= before
        order by c.relname
    loop
        execute format(
            'select exists (select 1 from %I j, projection_progress p
                            where p.lane = 0 and (j.xid, j.id) > (p.xid, p.id))', part.name)
            into unprojected;
        if not unprojected then
            execute format('drop table %I', part.name);
            dropped := dropped + 1;
        end if;
    end loop;
    return dropped;
end
$$;
