-- Why: each account's poll_min_interval (RECEIVER_ACCOUNTS) is when its new messages are
-- first polled too, not only the spacing of later polls: the projector schedules the first
-- poll, so the delay travels with each projected message (null: not polled).
--
-- A new type rather than projected_message altered in place: the previous release keeps
-- projecting on the migrated schema until it stops (README, "Upgrades: migrate first"), and
-- it sends rows laid out as projected_message. A later migration drops that one.
create type projected_message_v2 as (
    provider text, key text, recipient text, group_key text, reference text,
    channel_order text[], registered boolean, status text, status_at timestamptz, channel text,
    attempts text, seq integer, existed boolean, version bigint, account text,
    poll_in double precision
);
