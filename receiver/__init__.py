"""dlr-receiver: delivery reports from SMS and omnichannel providers, in one status model."""
