"""Code that two or more fleetwatch services really share: identity, subjects, messages, codec,
settings, NATS wiring, clocks and metrics helpers."""
