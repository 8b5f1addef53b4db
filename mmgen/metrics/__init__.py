"""Video evaluation: FVD (I3D features, published protocols), VBench dimensions and
aggregation, and an analytic benchmark for MovingShapes prompts.

Submodules are imported on use (``from mmgen.metrics.fvd import ...``) so that importing
the package stays cheap.
"""
