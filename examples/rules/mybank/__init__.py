"""Example python rules for a bank's purpose policies (see docs/RULES.md)."""
