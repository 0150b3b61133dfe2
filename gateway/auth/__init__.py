"""Authentication: passwords, API tokens, guards."""
