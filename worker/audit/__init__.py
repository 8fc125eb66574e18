"""Audits and tuning: replay a topic range and diff it, what-if rates, charts. Offline tools
built on the core and the stream's clients; the worker never imports them."""
