-- Why: the console's dashboard counts reports per minute over the last hour by when they
-- arrived; without this index that is a scan of the whole timeline on every page view.
create index events_received_idx on events (received_at);

-- A message's page answers "did our systems get told?": its deliveries, looked up by message.
create index deliveries_message_idx on deliveries (provider, message_key);
