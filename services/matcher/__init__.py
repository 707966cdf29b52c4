"""The matcher service: EVT events and CEL filters → run triggers on CMD."""
