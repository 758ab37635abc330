"""Specimen reconciliation against requisitions (middleman and lab)."""
