"""The RS Edit panel: backend URL, a health check, and (later) the editing controls."""

from qgis.gui import QgsDockWidget
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import settings
from .client import Health, check_health

DOCK_OBJECT_NAME = "RsEditDock"  # QGIS saves/restores dock state by object name


class RsEditDock(QgsDockWidget):
    """Dock widget; widgets carry object names so tests and QGIS can find them."""

    def __init__(self, parent=None):
        super().__init__("RS Edit", parent)
        self.setObjectName(DOCK_OBJECT_NAME)

        body = QWidget(self)
        layout = QVBoxLayout(body)

        row = QHBoxLayout()
        row.addWidget(QLabel("Backend URL", body))
        self.url_edit = QLineEdit(settings.backend_url(), body)
        self.url_edit.setObjectName("backendUrlEdit")
        self.url_edit.setPlaceholderText(settings.DEFAULT_BACKEND_URL)
        row.addWidget(self.url_edit)
        layout.addLayout(row)

        self.check_button = QPushButton("Check backend", body)
        self.check_button.setObjectName("checkBackendButton")
        layout.addWidget(self.check_button)

        self.status_label = QLabel("Backend not checked yet.", body)
        self.status_label.setObjectName("statusLabel")
        # Plain text: the backend's version string must not be interpreted as HTML.
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status_label)

        note = QLabel(
            "Editing from QGIS arrives in a later version; for now use the "
            "`rs-edit edit` command line.",
            body,
        )
        note.setObjectName("laterVersionNote")
        note.setWordWrap(True)
        layout.addWidget(note)
        layout.addStretch(1)
        self.setWidget(body)

        self.url_edit.editingFinished.connect(self.save_url)
        self.check_button.clicked.connect(self.check_backend)

    def save_url(self) -> str:
        """Persist the URL field (empty resets to the default) and return the URL in use."""
        settings.set_backend_url(self.url_edit.text())
        url = settings.backend_url()
        if self.url_edit.text() != url:
            self.url_edit.setText(url)
        return url

    def check_backend(self) -> Health:
        """Run the health check and show its outcome in the status label."""
        url = self.save_url()
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            health = check_health(url)
        finally:
            QApplication.restoreOverrideCursor()
        self.status_label.setText(health.message)
        self.status_label.setStyleSheet("color: #1a7f37;" if health.ok else "color: #b42318;")
        return health
