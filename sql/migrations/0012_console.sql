-- Why: the console's dashboard counts reports per minute over the last hour by when they
-- arrived; without this index that is a scan of the whole timeline on every page view.
create index events_received_idx on events (received_at);

-- A message's page answers "did our systems get told?": its deliveries, looked up by message.
create index deliveries_message_idx on deliveries (provider, message_key);

-- Subscription health: the attempts of the last day (not every attempt ever made), and the
-- dead letters per subscription (not every delivery it ever had).
create index delivery_attempts_attempted_idx on delivery_attempts (attempted_at);
create index deliveries_dead_idx on deliveries (subscription_id) where state = 'dead';
