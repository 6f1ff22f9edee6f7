"""Command-line tools run with ``python -m crowdloss.tools.<name>`` (see each module)."""
