"""Test helpers shared through tests/conftest.py fixtures."""
