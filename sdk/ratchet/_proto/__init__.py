"""Generated gRPC stubs for the worker protocol (`make proto`)."""
