"""Command-line tools built on the public entry points (``python -m crowdloss.tools.<name>``)."""
