"""Reliability and security tests (issue 8): hostile input, auth on every endpoint, load, crashes."""
