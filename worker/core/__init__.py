"""The pure core: settings, events, routing math and the record router. No I/O; every other
layer builds on it, and it imports none of them."""
