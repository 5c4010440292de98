"""Tests of the Kandinsky service; a package so that ``python -m tests.tiny_models OUTDIR`` works."""
