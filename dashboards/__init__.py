"""Panel views. They talk to the app layer only."""
