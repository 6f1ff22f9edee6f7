"""Command-line tools: ``pods_train`` (train.py) and ``pods_test`` (test.py), sharing common.py."""
