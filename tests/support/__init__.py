"""Test support: real hubs in subprocesses on 127.0.0.1 port 0; one client interface over every transport."""
