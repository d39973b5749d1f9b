"""Thin HTTP handlers: read, verify, decode, call one function, return."""
