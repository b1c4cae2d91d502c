"""Targets T behind one interface (base.Target): a classifier, an SSD, and Faster R-CNN from Model Garden."""
