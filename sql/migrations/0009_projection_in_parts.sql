-- Why: a journal row with more status updates than one projection transaction may apply (an
-- Infobip batch of 75,000 reports fits the body limit) is applied in parts, each a
-- transaction of its own, and the rows behind it are projected beside those parts rather
-- than after the whole of it.
--
-- (xid, id) keeps its meaning: every journal row at or below it is applied, and it passes
-- the large row only with that row's last part. part_* names the row right after it, being
-- applied: its first part_done updates are. ahead_* says how far the rows after that one are
-- applied too. Both null when no row is in parts. Replaying a part is harmless (dedup keys),
-- but none is replayed: each part moves part_done in its own transaction.
alter table projection_progress
    add column part_xid xid8,
    add column part_id bigint,
    add column part_done integer not null default 0,
    add column ahead_xid xid8,
    add column ahead_id bigint;
