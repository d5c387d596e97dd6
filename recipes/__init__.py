"""Training recipes that chain the project's commands: `python recipes/campaign.py` (see recipes/README.md)."""
