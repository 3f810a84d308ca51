"""Experiments: the demo and the paper's tables and figures as runnable functions."""
