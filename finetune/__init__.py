"""graft's finetune package."""
