"""autoresearch-tui: the Textual dashboard."""
