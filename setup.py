"""Builds fused_rnn; metadata lives in pyproject.toml."""

from setuptools import setup

setup()
