"""graft's loop package."""
