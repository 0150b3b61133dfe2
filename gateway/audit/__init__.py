"""Audit trail: every change, who made it, from which request."""
