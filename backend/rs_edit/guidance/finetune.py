"""Text guidance for a trained tile model: prompt-guided fine-tuning (the paper's method) and the
cheaper SinDDM-style path (CLIP gradients applied while sampling).

Both look at the tile the same way (`EditScene`): the original image at every scale of the
model's pyramid, the ROI as a soft mask per scale, and the ROI's box. CLIP judges the ROI *in its
context*: the clean estimate is composited over the original outside the mask before CLIP sees
augmented views of the ROI's box.

Fine-tuning freezes the first blocks of the network (the "encoder") and trains the rest so that
CLIP's similarity between the prompt ensemble and the ROI rises, while a fidelity term (the
ordinary denoising loss outside the ROI) keeps the network true to the tile's own statistics.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.diffusion import Guide, Inpaint
from ..engine.model import TileModel
from ..engine.pyramid import blurry_inputs, build_pyramid
from ..progress import ProgressCallback, Stage, no_progress, share
from .views import clip_views

Box = tuple[int, int, int, int]  # row0, col0, row1, col1 (exclusive)


@dataclass
class EditScene:
    """The tile at every scale of the model's pyramid, with its ROI."""

    known: list[torch.Tensor]  # (1, C, h, w) original image per scale, model range
    blurry: list[torch.Tensor | None]  # scale s-1 upsampled to scale s (None at 0)
    masks: list[torch.Tensor]  # (1, 1, h, w) in [0, 1]: 1 = regenerate
    boxes: list[Box]  # the ROI's bounding box per scale
    rgb: tuple[int, int, int]  # bands CLIP sees as RGB

    @property
    def inpaint(self) -> Inpaint:
        return Inpaint(known=self.known, masks=self.masks)

    def rgb01(self, image: torch.Tensor) -> torch.Tensor:
        """Model-range image (B, C, h, w) -> the RGB CLIP sees, in [0, 1]."""
        return ((image[:, list(self.rgb)] + 1) / 2).clamp(0, 1)


def build_scene(
    model: TileModel, image: np.ndarray, alpha: np.ndarray, rgb: tuple[int, int, int]
) -> EditScene:
    """`image`: (C, H, W) model-range tile the model was trained on; `alpha`: (H, W) blend
    weight of the ROI (0 outside)."""
    device = model.device
    known = [k.to(device) for k in build_pyramid(image, model.spec)]
    blurry = [None if b is None else b.to(device) for b in blurry_inputs(known)]
    return _scene(known, blurry, alpha, rgb)


def single_scale_scene(
    image: np.ndarray, alpha: np.ndarray, rgb: tuple[int, int, int], device: torch.device
) -> EditScene:
    """The tile at one scale, no model pyramid: what the training-free coarse sampler edits."""
    known = [torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)]
    return _scene(known, [None], alpha, rgb)


def _scene(known, blurry, alpha: np.ndarray, rgb) -> EditScene:
    device = known[0].device
    full = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None].to(device)
    masks, boxes = [], []
    for k in known:
        h, w = k.shape[-2:]
        # Area averaging keeps thin ROIs visible at coarse scales; max keeps them editable.
        m = torch.maximum(F.adaptive_avg_pool2d(full, (h, w)), F.adaptive_max_pool2d(full, (h, w)))
        masks.append(m.clamp(0, 1))
        boxes.append(_box(m[0, 0] > 0.01))
    return EditScene(known=known, blurry=blurry, masks=masks, boxes=boxes, rgb=tuple(rgb))


def _box(mask: torch.Tensor) -> Box:
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if len(rows) == 0:  # an ROI too small for this scale: CLIP looks at the whole image
        return (0, 0, mask.shape[0], mask.shape[1])
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


class ClipObjective:
    """1 - cosine similarity between CLIP views of the ROI (in context) and the text target."""

    def __init__(self, clip, target: torch.Tensor, scene: EditScene, views: int, seed: int):
        self.clip, self.target, self.scene, self.views = clip, target, scene, views
        self.generator = torch.Generator(scene.known[0].device)
        self.generator.manual_seed(seed)

    def __call__(self, clean: torch.Tensor, scale: int) -> torch.Tensor:
        scene = self.scene
        mask = scene.masks[scale]
        edited = mask * clean + (1 - mask) * scene.known[scale]
        views = clip_views(
            scene.rgb01(edited),
            self.views,
            box=scene.boxes[scale],
            generator=self.generator,
            size=self.clip.image_size,
        )
        return 1 - self.clip.similarity(views, self.target).mean()

    @torch.no_grad()
    def similarity(self, image: torch.Tensor) -> float:
        """CLIP similarity of the ROI box of a finest-scale image, one plain view (for reports)."""
        r0, c0, r1, c1 = self.scene.boxes[-1]
        crop = self.scene.rgb01(image)[..., r0:r1, c0:c1]
        return float(self.clip.similarity(crop, self.target).mean())


def finetune(
    model: TileModel,
    scene: EditScene,
    objective: ClipObjective,
    *,
    steps: int,
    lr: float,
    freeze_blocks: int,
    fidelity: float,
    seed: int,
    progress: ProgressCallback = no_progress,
) -> TileModel:
    """A copy of `model` whose later blocks are tuned so that its edits match the prompt."""
    tuned = copy.copy(model)
    tuned.net = net = copy.deepcopy(model.net).float()
    frozen = [net.cond, *net.blocks[:freeze_blocks]]
    for module in frozen:
        module.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"freeze_blocks={freeze_blocks} leaves nothing to fine-tune")
    optimizer = torch.optim.Adam(params, lr=lr)
    diffusion = model.diffusion()
    chooser = random.Random(seed)
    generator = torch.Generator(model.device)
    generator.manual_seed(seed)
    device = model.device

    net.train()
    progress(Stage.FINETUNE, 0, steps, None)
    for step in range(1, steps + 1):
        s = chooser.randrange(len(scene.known))
        clean, blurry, mask = scene.known[s], scene.blurry[s], scene.masks[s]
        t = chooser.randrange(diffusion.t_max[s])
        t_ = torch.full((1,), t, device=device)
        noise = torch.randn(clean.shape, device=device, generator=generator)
        x_t = diffusion.noised(clean, blurry, s, t_, noise)
        out = net(x_t, t_, torch.full((1,), s, device=device)).float()
        # The clean estimate as the sampler computes it (so what is tuned is what is sampled).
        if diffusion.predicts_clean(s):
            estimate = out
        else:
            estimate = diffusion.clean_from_noise(x_t, out, t, s, blurry, clamp=False)
        loss = objective(estimate, s)
        if fidelity > 0:
            target = clean if diffusion.predicts_clean(s) else noise
            outside = 1 - mask
            denoise = ((out - target).abs() * outside).sum() / (outside.sum() * out.shape[1] + 1)
            loss = loss + fidelity * denoise
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress(Stage.FINETUNE, step, steps, float(loss.detach()))
    net.eval().requires_grad_(False)
    return tuned


def sampling_guide(objective: ClipObjective, strength: float) -> Guide:
    """The cheaper path: no fine-tuning, CLIP's gradient steers every sampling step."""
    return lambda clean, scale: strength * objective(clean, scale)


def sample_edits(
    model: TileModel,
    scene: EditScene,
    seeds: list[int],
    *,
    guide: Guide | None = None,
    progress: ProgressCallback = no_progress,
    on_sample: Callable[[int, torch.Tensor], None] | None = None,
) -> list[np.ndarray]:
    """One edit per seed: the ROI regenerated through every scale, fitted to its context.

    Progress is one "sample" stage over all variants (it never goes back between them)."""
    edits = []
    for i, seed in enumerate(seeds):
        image = model.sample(
            1,
            seed=seed,
            progress=share(progress, i, len(seeds)),
            inpaint=scene.inpaint,
            guide=guide,
        )
        if on_sample is not None:
            on_sample(i, image)
        edits.append(image[0].float().cpu().numpy())
    return edits
