"""Experiments that reproduce the paper's claims with terse_tf."""
