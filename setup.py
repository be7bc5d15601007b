"""Packaging shim: all metadata lives in setup.cfg (Dataflow's --setup_file needs a setup.py)."""

from setuptools import setup

setup()
