-- Why: GET /v1/messages?reference=: your own id for a send (an order number, say), given at
-- registration or carried by the provider's reports (Infobip callbackData), finds its messages.
create index messages_reference_idx on messages (reference, created_at desc, provider desc, key desc)
    where reference is not null;
