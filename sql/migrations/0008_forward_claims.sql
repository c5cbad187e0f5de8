-- Why: two forwarder fixes.
--
-- 1. Claims take from each enabled subscription at most its free slots, so they walk every
-- subscription's due rows in order: that needs (subscription_id, next_attempt_at). The index
-- on next_attempt_at alone served the old claim, which took due rows whoever they were for,
-- and now would only cost writes. Built inside the migration's transaction, so writes to
-- deliveries wait while it builds; it holds pending rows only, few while forwarding keeps up.
create index deliveries_due_by_subscription_idx on deliveries (subscription_id, next_attempt_at)
    where state = 'pending';
drop index deliveries_due_idx;

-- 2. Every secret a rotation replaced signs beside the current one until its own grace period
-- ends. One previous_secret column let a second rotation drop the first's old secret early,
-- failing receivers still on it.
create type retired_secret as (secret text, expires_at timestamptz);
alter table subscriptions add column previous_secrets retired_secret[] not null default '{}';
update subscriptions
set previous_secrets = array[row(previous_secret, previous_secret_expires_at)::retired_secret]
where previous_secret is not null and previous_secret_expires_at > now();
alter table subscriptions drop column previous_secret, drop column previous_secret_expires_at;
