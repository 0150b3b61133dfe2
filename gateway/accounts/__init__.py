"""Accounts: users, their passwords and API tokens, and who is calling (the one identity domain)."""
