"""Text guidance: CLIP models and prompt ensembles."""

# How the prompt steers the edit: the paper's fine-tuning, CLIP gradients while sampling, or
# none; "auto" picks by the preset (`resolve_guidance`).
GUIDANCE_AUTO = "auto"
GUIDANCE_METHODS = (GUIDANCE_AUTO, "finetune", "sampling", "none")


def resolve_guidance(name: str, trains_network: bool) -> tuple[str, str]:
    """The guidance to run and, for the log, why: `auto` fine-tunes where the preset trains a
    network anyway, and guides the sampler where it makes the layout without training (so
    that fine-tuning's training does not undo the seconds it saves)."""
    if name != GUIDANCE_AUTO:
        return name, f"guidance {name!r} as asked"
    if trains_network:
        return "finetune", "guidance auto -> 'finetune' (the preset trains a network)"
    return "sampling", "guidance auto -> 'sampling' (the preset's coarse layout needs no training)"
