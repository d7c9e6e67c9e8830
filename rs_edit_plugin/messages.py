"""Messages for QGIS's message bar, shown whole.

The bar shows one line: a long message (a backend error with its hint) was cut mid-sentence.
A message longer than SHORT_CHARS goes to the bar as its first sentence (or its first words),
with the whole text behind the bar's "more" button; the whole text also goes to the log.
"""

from qgis.core import Qgis, QgsMessageLog

TITLE = "RS Edit"
SHORT_CHARS = 100


def short_text(text: str, limit: int = SHORT_CHARS) -> str:
    """The first sentence of `text` when it fits in `limit` characters, else its first words
    and "…"; `text` itself when it is short and on one line."""
    text = (text or "").strip()
    if len(text) <= limit and "\n" not in text:
        return text
    first = text.split("\n", 1)[0].strip()
    for end in (". ", "? ", "! "):
        index = first.find(end)
        if 0 < index < limit:
            first = first[: index + 1]
            break
    if len(first) <= limit:
        return first if first != text else text
    cut = first[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def push(bar, text: str, level=Qgis.MessageLevel.Info, duration: int = 8) -> None:
    """Show `text` on `bar` (None: only the log): whole when short, else its first sentence
    with the whole text behind "more"."""
    text = (text or "").strip()
    if level in (Qgis.MessageLevel.Warning, Qgis.MessageLevel.Critical):
        QgsMessageLog.logMessage(text, TITLE, level)
    if bar is None:
        return
    short = short_text(text)
    if short == text:
        bar.pushMessage(TITLE, text, level, duration)
    else:  # QgsMessageBar.pushMessage(title, text, showMore, level, duration): QGIS >= 3.18
        bar.pushMessage(TITLE, short, text, level, duration)
