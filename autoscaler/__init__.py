"""Replica autoscaling policy (``policy``, plugged into Serve by ``serve_policy``), cost-aware
GPU type choice (``nodetypes``), and the trace-replay simulator. Every error it raises is an
``errors.AutoscalerError``."""
