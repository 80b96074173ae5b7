"""Figures: matplotlib, saved as PNG with labelled axes."""
