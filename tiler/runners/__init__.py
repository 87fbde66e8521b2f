"""Runners wire the stages of `tiler.pipeline` together; they hold no algorithms."""
