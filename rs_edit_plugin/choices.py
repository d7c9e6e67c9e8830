"""The dock's CLIP and preset combos, filled from the backend's health answer.

CLIP: every model the plugin knows or the backend reports; those whose weights the backend
lacks are marked "(no weights)" and disabled, and a choice without weights is replaced by one
with weights (the backend's default first). Preset: the backend's names ("auto" saying what
it picks on the backend's device), or the plugin's own list for an older backend.
"""

from qgis.PyQt.QtCore import Qt

from . import settings

NO_WEIGHTS = " (no weights)"


def clip_name(combo) -> str:
    """The CLIP model chosen (the item's name, or what the user typed)."""
    text = combo.currentText().strip()
    index = combo.currentIndex()
    if index >= 0 and text == combo.itemText(index) and combo.itemData(index):
        return str(combo.itemData(index))
    return text[: -len(NO_WEIGHTS)] if text.endswith(NO_WEIGHTS) else text


def _set_enabled(combo, index, enabled):
    item = combo.model().item(index) if hasattr(combo.model(), "item") else None
    if item is not None:
        item.setEnabled(enabled)


def fill_clips(combo, health=None, current: str = "") -> str:
    """Offer the CLIP models; select `current` unless the backend lacks its weights. Returns
    the name selected."""
    current = current or clip_name(combo) or settings.DEFAULT_CLIP
    names = list(settings.CLIP_MODELS)
    weights = dict(health.clip_weights) if health is not None else {}
    names += [n for n in weights if n not in names]
    combo.blockSignals(True)
    try:
        combo.clear()
        for i, name in enumerate(names):
            missing = weights.get(name) is False
            combo.addItem(name + (NO_WEIGHTS if missing else ""), name)
            _set_enabled(combo, i, not missing)
            if missing:
                combo.setItemData(
                    i, "the backend has no weights for this model", Qt.ItemDataRole.ToolTipRole
                )
        choice = current
        if weights.get(current) is False:
            default = health.clip_default if health is not None else ""
            ready = [n for n in names if weights.get(n) is True]
            if weights.get(default) is True:
                choice = default
            elif ready:
                choice = ready[0]
        index = combo.findData(choice)
        if index >= 0:
            combo.setCurrentIndex(index)
        else:  # a checkpoint path or a name neither side knows
            combo.setEditText(choice)
    finally:
        combo.blockSignals(False)
    return choice


def preset_name(combo) -> str:
    data = combo.currentData()
    return str(data) if data else combo.currentText().strip()


def auto_label(health) -> str:
    """ "auto (fast on this CPU)": what auto picks, when the backend says."""
    if health is None or not health.preset_auto:
        return "auto"
    device = (health.device or "").lower()
    if device == "cpu":
        where = "this CPU"
    elif device.startswith("cuda"):
        where = "the GPU"
    else:
        where = device or "the backend"
    return f"auto ({health.preset_auto} on {where})"


def fill_presets(combo, health=None, current: str = "") -> str:
    """Offer the backend's presets (the plugin's own list for an older backend); keep
    `current` when offered, else "auto". Returns the name selected."""
    current = current or preset_name(combo) or settings.DEFAULT_PRESET
    names = list(health.presets) if health is not None and health.presets else []
    names = names or list(settings.PRESETS)
    combo.blockSignals(True)
    try:
        combo.clear()
        for name in names:
            combo.addItem(auto_label(health) if name == "auto" else name, name)
        choice = current if current in names else settings.DEFAULT_PRESET
        combo.setCurrentIndex(max(0, combo.findData(choice)))
    finally:
        combo.blockSignals(False)
    return preset_name(combo)
