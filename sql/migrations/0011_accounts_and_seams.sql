-- Why: issue 11. A final message is never scheduled for a poll: finished messages kept their
-- next_poll_at, and every poll claim scanned them all, without bound. And provider accounts:
-- each report remembers the account it was verified by (or polled through).

-- Finals mirror receiver.status.FINAL.
update messages set next_poll_at = null
where next_poll_at is not null
  and status in ('delivered', 'read', 'failed', 'expired', 'rejected', 'cancelled');
alter table messages add constraint messages_final_not_scheduled check (
    next_poll_at is null
    or status not in ('delivered', 'read', 'failed', 'expired', 'rejected', 'cancelled')
);

-- The account a request came by (null: from before accounts, or the default one). On the
-- journal for bodies the projector parses, and on the messages it creates.
alter table journal add column account text;
alter table messages add column account text;
alter type projected_message add attribute account text;
create index messages_account_idx on messages (provider, account, created_at desc, key desc)
    where account is not null;
