"""Targets T behind one interface (base.Target): a classifier and an SSD detector."""
