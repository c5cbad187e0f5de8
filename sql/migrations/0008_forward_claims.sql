-- Why: claims take from each enabled subscription at most its free slots, so they walk every
-- subscription's due rows in order: that needs (subscription_id, next_attempt_at). The index
-- on next_attempt_at alone served the old claim, which took due rows whoever they were for,
-- and now would only cost writes. Built inside the migration's transaction, so writes to
-- deliveries wait while it builds; it holds pending rows only, few while forwarding keeps up.
create index deliveries_due_by_subscription_idx on deliveries (subscription_id, next_attempt_at)
    where state = 'pending';
drop index deliveries_due_idx;
