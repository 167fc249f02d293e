"""graft's compiler package."""
