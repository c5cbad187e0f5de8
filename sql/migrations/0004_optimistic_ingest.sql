-- Why: a batch is now written by one statement that is its own transaction, instead of
-- BEGIN, a row-locking SELECT, the write and COMMIT: two round trips where there were five.
-- Nothing is locked while the status rules run in Python, so each message carries a version,
-- bumped by every write; a batch computed from an older version must not land.

alter table messages add column version bigint not null default 0;

-- Called by the batch write with how many message rows it meant to write and how many it
-- did. Fewer means another transaction changed or created one of them after the batch read
-- it: the whole statement is undone, and the serialization failure tells ingest to retry.
create function ingest_check_written(expected bigint, written bigint) returns bigint
language plpgsql as $$
begin
    if written <> expected then
        raise exception '% of % messages changed since the batch read them',
            expected - written, expected
            using errcode = 'serialization_failure';
    end if;
    return written;
end
$$;
