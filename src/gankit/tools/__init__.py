"""Tools on top of the API: the benchmark, hyper-parameter sweeps, the model table and a FLOP
counter."""
