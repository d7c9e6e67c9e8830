"""Text guidance: CLIP models and prompt ensembles."""
