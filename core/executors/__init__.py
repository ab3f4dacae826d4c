"""Executors: where one training run executes (local subprocess, Ray task); see base.py for the interface."""
