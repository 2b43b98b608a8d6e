"""Flower glue: the ClientApp, the Grid transport and engine, the Ray simulation, record codecs."""
