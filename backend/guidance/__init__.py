"""Text guidance: CLIP models and prompt ensembles."""

# How the prompt steers the edit: the paper's fine-tuning, CLIP gradients while sampling, or none.
GUIDANCE_METHODS = ("finetune", "sampling", "none")
