"""Plot helpers returning matplotlib figures (never shown or saved here)."""
