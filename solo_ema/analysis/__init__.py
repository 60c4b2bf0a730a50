"""Analysis tools: gradient-norm monitor (grad_monitor), weight recorder (weights), cost accounting (cost),
the run callbacks built from a config (callbacks) and the plots behind solo-ema-plot (plots).

Submodules are imported where used, so that importing the package pulls in neither Lightning nor matplotlib.
"""
