"""Dashboard screens: the main dashboard, experiment detail, modals."""
