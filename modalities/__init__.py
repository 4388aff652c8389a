"""Modalities: each one says how its data becomes tokens, what to hide and what to reconstruct.

Installed as ``mimx.modalities`` (``modalities`` is a taken name on the package index).
"""
