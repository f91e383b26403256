"""Extra networks that change the model for a job: LoRA and its handler."""
