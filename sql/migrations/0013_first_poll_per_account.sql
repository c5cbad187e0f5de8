-- Why: each account's poll_min_interval (RECEIVER_ACCOUNTS) is when its new messages are
-- first polled too, not only the spacing of later polls: the projector schedules the first
-- poll, so the delay travels with each projected message (null: not polled).
alter type projected_message drop attribute poll, add attribute poll_in double precision;
